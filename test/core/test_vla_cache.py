"""VLA-Cache's layer-adaptive reuse on the tiny preset with 4 backbone layers: nesting, entropy, exactness."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dysta_ros.errors import ConfigError
from dysta_ros.evaluation.entropy import entropy_profile
from dysta_ros.evaluation.scenes import structured_frames
from dysta_ros.policy.attention import AttentionPlan
from dysta_ros.policy.config import PROFILE_HEADS, PROFILE_QUERIES
from dysta_ros.policy.runtime import build_model, build_runtime
from dysta_ros.tokens import build_strategy
from dysta_ros.tokens.flops import full_flops, linear_flops_per_token
from dysta_ros.tokens.vla_cache import layer_reuse_ratios
from dysta_ros.types import Observation

TOL = 1e-4  # float32 reordering of the same sums; actions are O(1)
HISTORY = 2
PROFILE = [0.9, 0.6, 0.8, 0.3]  # layer 0 diffuse, layer 3 concentrated
INSTRUCTION = "push the red block"


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0, overrides={"backbone.layers": 4})[0]


@pytest.fixture(scope="module")
def frames():
    return structured_frames(4, 72, 96, seed=1)


def obs(image):
    return Observation(stamp=0.0, images={"main": image}, state=np.zeros(6), instruction=INSTRUCTION)


def run(model, strategy, params, images):
    rt = build_runtime(model, strategy, params, history=HISTORY)
    return rt, [rt.step(obs(im)) for im in images]


def noise_image(seed):
    return np.random.default_rng(seed).integers(0, 256, (72, 96, 3), dtype=np.uint8)


def test_ratios_follow_entropy_with_damped_rises():
    # 1 - min-max entropy = [0, .5, 1/6, 1]; a fall is not followed (nesting), rises damped.
    assert layer_reuse_ratios(PROFILE, growth_factor=1.0) == pytest.approx([0.0, 0.5, 0.5, 1.0])
    assert layer_reuse_ratios(PROFILE, growth_factor=0.55) == pytest.approx([0.0, 0.275, 0.275, 0.67375])
    assert layer_reuse_ratios([0.7, 0.7, 0.7004], growth_factor=0.55) == [1.0, 1.0, 1.0]  # flat


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=24), st.floats(0.0, 1.0))
def test_ratios_never_decrease_and_stay_shares(entropy, growth):
    ratios = layer_reuse_ratios(entropy, growth)
    assert all(0.0 <= r <= 1.0 for r in ratios)
    assert all(b >= a for a, b in zip(ratios, ratios[1:]))
    if max(entropy) - min(entropy) >= 1e-3 and entropy[0] == max(entropy):
        assert ratios[0] == 0.0  # the most diffuse layer, first, reuses nothing


@torch.inference_mode()
def test_reuse_sets_are_nested_by_depth_and_flops_count_each_layers_queries(model):
    """A reused token keeps last step's K/V exactly; on new noise every computed one differs."""
    params = {"similarity_threshold": -1.0, "layer_entropy": PROFILE, "growth_factor": 1.0}
    rt = build_runtime(model, "vla_cache", params, history=1)
    rt.step(obs(noise_image(0)))
    before = [k for k, _ in rt.strategy.buffer]
    _, stats = rt.step(obs(noise_image(1)))
    visual = rt.spec.tokens_per_frame
    reused_per_layer = rt.strategy.last_reused_per_layer
    reusable = visual - round(0.1 * visual)  # every patch similar enough, minus the relevant tenth
    assert reused_per_layer == [round(r * reusable) for r in (0.0, 0.5, 0.5, 1.0)]
    reused_sets = []
    for layer, (k, _) in enumerate(rt.strategy.buffer):
        same = (k[0, :, :visual] == before[layer][0, :, :visual]).all(dim=(0, 2))  # (N,)
        reused_sets.append(set(same.nonzero().flatten().tolist()))
        assert len(reused_sets[-1]) == reused_per_layer[layer]
    assert all(a <= b for a, b in zip(reused_sets, reused_sets[1:]))  # nested
    cfg = model.cfg.backbone
    length = rt.strategy.length
    computed = [[p for p in range(length) if p not in reused] for reused in reused_sets]
    layer_tokens = sum(len(rows) for rows in computed)
    pairs = sum(p + 1 for rows in computed for p in rows)  # causal: key order <= query order
    expected = layer_tokens * linear_flops_per_token(cfg) + 4.0 * cfg.heads * cfg.head_dim * pairs
    assert stats.flops_ratio == pytest.approx(expected / full_flops(cfg, length), rel=1e-9)
    assert stats.recomputed_tokens == round(layer_tokens / cfg.layers)


@torch.inference_mode()
def test_adaptive_reuse_of_unchanged_frames_equals_full(model, frames):
    _, full = run(model, "full", None, [frames[0]] * 3)
    params = {"exclude_top_fraction": 0.25, "layer_entropy": PROFILE}
    rt, cached = run(model, "vla_cache", params, [frames[0]] * 3)
    for (a, _), (b, _) in zip(full, cached):
        np.testing.assert_allclose(b.actions, a.actions, atol=TOL)
    reused = rt.strategy.last_reused_per_layer
    assert reused[0] == 0 < reused[1] <= reused[2] < reused[3]
    _, uniform = run(model, "vla_cache", {**params, "layer_adaptive": False}, [frames[0]] * 3)
    # Fewer tokens reused at shallow layers: more computed than uniform, less than full.
    assert uniform[-1][1].flops_ratio < cached[-1][1].flops_ratio < 1.0
    assert uniform[-1][1].recomputed_tokens < cached[-1][1].recomputed_tokens < full[-1][1].recomputed_tokens


@torch.inference_mode()
def test_never_reusing_equals_full_bit_for_bit(model, frames):
    _, full = run(model, "full", None, frames[:3])
    rt, never = run(model, "vla_cache", {"similarity_threshold": 2.0}, frames[:3])
    for (a, fs), (b, s) in zip(full, never):
        assert np.array_equal(a.actions, b.actions)
        assert s.recomputed_tokens == fs.recomputed_tokens and s.flops_ratio == fs.flops_ratio
    assert rt.strategy.entropy is not None  # measured on the first pass without touching outputs


@torch.inference_mode()
def test_uniform_switch_reuses_every_reusable_token_at_every_layer(model, frames):
    images = [frames[0], frames[0], frames[1]]
    rt, uniform = run(model, "vla_cache", {"layer_adaptive": False}, images)
    assert rt.strategy.ratios == [1.0] * 4 and rt.strategy.entropy is None  # nothing measured
    reused = rt.strategy.last_reused_per_layer
    assert len(set(reused)) == 1 and reused[0] > 0
    tail = len(rt.tokenizer.encode(INSTRUCTION)) + 1
    assert uniform[-1][1].recomputed_tokens == HISTORY * rt.spec.tokens_per_frame + tail - reused[0]
    # A flat entropy profile says no layer concentrates more than another: the same as uniform.
    _, flat = run(model, "vla_cache", {"layer_entropy": [0.5] * 4}, images)
    for (a, _), (b, _) in zip(uniform, flat):
        assert np.array_equal(a.actions, b.actions)


@torch.inference_mode()
def test_measured_schedule_follows_the_entropy_profile_tool(model, frames):
    rt, _ = run(model, "vla_cache", None, [frames[0]])
    profiled = entropy_profile(model, [obs(frames[0])] * HISTORY, HISTORY, PROFILE_HEADS, PROFILE_QUERIES)
    np.testing.assert_allclose(rt.strategy.entropy, profiled[0], atol=1e-5)
    assert rt.strategy.ratios == layer_reuse_ratios(rt.strategy.entropy, 0.55)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"growth_factor": 1.5}, "growth_factor"),
        ({"growth_factor": -0.1}, "growth_factor"),
        ({"layer_adaptive": "yes"}, "layer_adaptive"),
        ({"layer_entropy": [0.5, 1.2, 0.5, 0.5]}, "layer_entropy"),
        ({"layer_entropy": ["high", 0.5, 0.5, 0.5]}, "layer_entropy"),
        ({"layer_entropy": [0.5, 0.5]}, "layer_entropy"),  # the backbone has 4 layers
    ],
)
def test_bad_params_raise_config_error_naming_the_field(model, params, field):
    with pytest.raises(ConfigError, match=field):
        build_strategy("vla_cache", params, model.cfg)


def test_ros_string_array_profile_is_accepted(model):
    strategy = build_strategy("vla_cache", {"layer_entropy": ["0.9", "0.6", "0.8", "0.3"]}, model.cfg)
    assert strategy.entropy == PROFILE


def test_plan_refuses_layer_queries_that_are_not_nested():
    order = torch.arange(4)
    buffer = [(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))] * 2
    with pytest.raises(ValueError, match="subset"):
        AttentionPlan(
            query_order=order,
            buffer=buffer,
            buffer_order=order,
            write_index=order,
            layer_queries=[torch.tensor([0, 2, 3]), torch.tensor([1, 3])],
        )
