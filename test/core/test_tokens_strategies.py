"""Token strategies on the tiny preset: exactness against one-shot forwards, counts, gate, FPS."""

import logging

import numpy as np
import pytest
import torch

from dysta_ros.evaluation.scenes import structured_frames
from dysta_ros.policy.attention import AttentionPlan, plan_attention, repeat_kv
from dysta_ros.policy.runtime import build_model, build_runtime
from dysta_ros.tokens import STRATEGIES, available_strategies
from dysta_ros.tokens.base import Frame, StepContext
from dysta_ros.tokens.gotohunt import farthest_point_sampling, strided_patches
from dysta_ros.tokens.learned import gate_loss, info_nce
from dysta_ros.types import Observation

TOL = 1e-4  # float32 reordering of the same sums; actions are O(1)


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0)[0]


@pytest.fixture(scope="module")
def frames():
    return structured_frames(8, 72, 96, seed=1)


def obs(image, state=None):
    return Observation(
        stamp=0.0,
        images={"main": image},
        state=np.zeros(6) if state is None else state,
        instruction="push the red block",
    )


def run(model, strategy, params, images, history=4):
    rt = build_runtime(model, strategy, params, history=history)
    return rt, [rt.step(obs(im)) for im in images]


def tail_length(rt):
    return len(rt.tokenizer.encode("push the red block")) + 1


@pytest.mark.parametrize("name", available_strategies())
def test_every_strategy_steps_with_configured_token_counts(model, frames, name):
    rt, results = run(model, name, None, frames[:4], history=6)
    n, t, tail = rt.spec.tokens_per_frame, rt.spec.history, tail_length(rt)
    params = rt.strategy.params
    for chunk, stats in results:
        assert chunk.actions.shape == (rt.spec.horizon, rt.spec.action_dim)
        assert np.isfinite(chunk.actions).all()
        assert 0 < stats.flops_ratio <= 1.0 + 1e-9
        assert stats.history_frames == t
        if name in ("dysta", "dysta_gotohunt"):
            assert stats.static_l1_tokens == round(params.l1_fraction * n)
            assert stats.static_l2_tokens == round(params.l2_fraction * n)
            anchors = params.anchor_count(t) if name == "dysta_gotohunt" else t
            assert stats.frames_attended == anchors
            static = stats.static_l1_tokens + stats.static_l2_tokens
            assert stats.dynamic_tokens == (n - static) * anchors
            assert stats.context_tokens == static + stats.dynamic_tokens + tail
        elif name == "gotohunt":
            assert stats.frames_attended == params.anchor_count(t) == 4
            assert stats.context_tokens == stats.frames_attended * n + tail  # the keys global layers read
            assert stats.recomputed_tokens == t * n + tail  # queries stay complete
        else:
            assert stats.context_tokens == t * n + tail
            assert stats.recomputed_tokens <= stats.context_tokens
    assert set(STRATEGIES) == {"full", "dysta", "gotohunt", "vla_cache", "dysta_gotohunt"}


@pytest.mark.parametrize(
    "name, params",
    [
        ("dysta", {"l1_fraction": 0.0, "l2_fraction": 0.0}),
        # K = T (run's history is 4): every frame is an anchor, every key is read.
        ("gotohunt", {"num_anchors": 4, "sigma": 1, "local_layers": [], "strided_layers": []}),
        ("gotohunt", {"num_anchors": 4, "sigma": 1, "local_layers": [], "strided_layers": [],
                      "queries": "anchors"}),
        ("vla_cache", {"similarity_threshold": 2.0}),
        ("dysta_gotohunt", {"l1_fraction": 0.0, "l2_fraction": 0.0, "anchor_fraction": 1.0,
                            "local_layers": [], "strided_layers": []}),
    ],
)
def test_strategy_that_skips_nothing_equals_full(model, frames, name, params):
    _, full = run(model, "full", None, frames[:5])
    _, other = run(model, name, params, frames[:5])
    for (a, _), (b, _) in zip(full, other):
        np.testing.assert_allclose(b.actions, a.actions, atol=TOL)


def dysta_one_shot(rt):
    """Recompute the dysta layout [S1 | S2 | D_0..D_T-1 | text | state] in one backbone call
    ([S1 | S2 | text | D_0..D_T-1 | state] with cache_language)."""
    s = rt.strategy
    l1, l2, dyn = s.groups
    frames = list(rt.frames)
    static_patches = torch.cat([l1, l2])
    text = rt._text_embeds("push the red block")
    state = rt.model.embed_state(torch.zeros(6))
    n = rt.spec.tokens_per_frame
    text_positions = torch.arange(len(frames) * n, len(frames) * n + text.shape[0])
    state_position = torch.tensor([len(frames) * n + text.shape[0]])
    dynamic = [f.tokens[dyn] for f in frames]
    dynamic_positions = [k * n + dyn for k in range(len(frames))]
    if s.params.cache_language:
        embeds = torch.cat([frames[-1].tokens[static_patches], text] + dynamic + [state])
        positions = torch.cat([static_patches, text_positions] + dynamic_positions + [state_position])
    else:
        embeds = torch.cat([frames[-1].tokens[static_patches]] + dynamic + [text, state])
        positions = torch.cat([static_patches] + dynamic_positions + [text_positions, state_position])
    plan = AttentionPlan(query_order=torch.arange(embeds.shape[0]))
    rt.model.run_backbone(embeds, positions, plan)
    full_length = len(frames) * n + text.shape[0] + 1
    return rt.model.sample_actions(plan.records, full_length, rt.noise(rt.sequence - 1)).numpy(), plan


@torch.inference_mode()
@pytest.mark.parametrize("cache_language", [False, True])
def test_dysta_refreshing_every_step_equals_one_shot_forward_of_its_layout(model, frames, cache_language):
    rt = build_runtime(model, "dysta", {"delta_l1": -1.0, "cache_language": cache_language}, history=3)
    for image in frames[:4]:
        chunk, stats = rt.step(obs(image))
        assert stats.recached_l1 and stats.recached_l2
        expected, _ = dysta_one_shot(rt)
        np.testing.assert_allclose(chunk.actions, expected, atol=TOL)


@torch.inference_mode()
def test_cached_language_is_rebuilt_when_the_instruction_changes(model, frames):
    params = {"delta_l1": 10.0, "delta_l2": 10.0, "cache_language": True}
    rt = build_runtime(model, "dysta", params, history=2)
    rt.step(obs(frames[0]))
    _, stats = rt.step(obs(frames[1]))
    assert not stats.recached_l1 and not stats.recached_l2
    assert stats.recomputed_tokens == stats.dynamic_tokens + 1  # dynamic tokens and the state only
    other = obs(frames[2])
    other.instruction = "touch the blue cube"
    _, stats = rt.step(other)
    assert stats.recached_l2 and not stats.recached_l1
    torch.testing.assert_close(rt.strategy.cached_text, rt._text_embeds("touch the blue cube"))


def with_static_tokens_of(frame, reference, patches):
    """A copy of frame whose tokens at patches are reference's (what the static cache holds)."""
    tokens = frame.tokens.clone()
    tokens[patches] = reference.tokens[patches]
    return Frame(features=frame.features, tokens=tokens, index=frame.index)


@torch.inference_mode()
@pytest.mark.parametrize("cache_language", [False, True])
def test_cached_static_prefix_plus_new_tokens_equals_one_shot(model, frames, cache_language):
    # A huge delta: the static cache built at step 0 is reused for every later step.
    rt = build_runtime(model, "dysta", {"delta_l1": 10.0, "delta_l2": 10.0, "cache_language": cache_language},
                       history=3)
    rt.step(obs(frames[0]))
    reference = rt.frames[-1]
    for image in frames[1:4]:
        chunk, stats = rt.step(obs(image))
        assert not stats.recached_l1 and not stats.recached_l2
        l1, l2, _ = rt.strategy.groups
        current = rt.frames[-1]
        rt.frames[-1] = with_static_tokens_of(current, reference, torch.cat([l1, l2]))
        expected, plan = dysta_one_shot(rt)
        rt.frames[-1] = current
        np.testing.assert_allclose(chunk.actions, expected, atol=TOL)
        cached_k = rt.strategy.static_kv[-1][0]  # (1, Hkv, s, D), last layer
        torch.testing.assert_close(
            plan.records[len(plan.records) - 1][0][:, :, : cached_k.shape[2]], cached_k, atol=1e-5, rtol=1e-5
        )


@torch.inference_mode()
def test_l2_only_refresh_equals_rebuilding_both_levels(model, frames):
    rt = build_runtime(model, "dysta", {"delta_l1": 10.0, "delta_l2": 10.0}, history=2)
    rt.step(obs(frames[0]))
    reference = rt.frames[-1]
    rt.step(obs(frames[5]))
    strategy, current = rt.strategy, rt.frames[-1]
    ctx = StepContext(
        model=model,
        frames=list(rt.frames),
        text=rt._text_embeds(""),
        state=model.embed_state(torch.zeros(6)),
        grid=model.cfg.vision.grid,
        cameras=1,
    )
    strategy.build_static(ctx, current, "l2")  # L2 from the current frame on the cached L1
    l2_only = [(k.clone(), v.clone()) for k, v in strategy.static_kv]
    l1 = strategy.groups[0]
    strategy.build_static(ctx, with_static_tokens_of(current, reference, l1), "l1")
    for (k_a, v_a), (k_b, v_b) in zip(l2_only, strategy.static_kv):
        torch.testing.assert_close(k_a, k_b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v_a, v_b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(l2_only[-1][0][:, :, len(l1) :], reference_static_kv_l2(rt, reference, ctx))


def reference_static_kv_l2(rt, reference, ctx):
    """The L2 keys of the last layer as cached from the reference frame (before the refresh)."""
    strategy = rt.strategy
    strategy.build_static(ctx, reference, "l1")
    return strategy.static_kv[-1][0][:, :, len(strategy.groups[0]) :]


def test_farthest_point_sampling_picks_the_most_distant_frames():
    # Frames 0..5: 0,1,2 near one direction, 3 orthogonal, 4 opposite-ish, 5 = current near 0.
    d = torch.tensor([[1, 0, 0], [0.99, 0.1, 0], [0.98, 0.15, 0], [0, 1, 0], [0, 0, 1], [0.97, 0, 0.2]])
    d = torch.nn.functional.normalize(d, dim=-1)
    assert farthest_point_sampling(d, 2) == [0, 5]  # oldest first, the current frame always kept
    assert farthest_point_sampling(d, 4) == [0, 3, 4, 5]  # then the two far-away frames
    assert farthest_point_sampling(d, 1) == [5]
    assert farthest_point_sampling(d, 10) == [0, 1, 2, 3, 4, 5]


def test_gate_fires_on_scene_change_and_not_on_unchanged_frame(model, frames):
    rt = build_runtime(model, "dysta", None, history=2)
    first = rt.step(obs(frames[0]))[1]
    assert first.recached_l1  # an empty cache is built on the first step
    for _ in range(3):
        _, stats = rt.step(obs(frames[0]))
        assert not stats.recached_l1 and not stats.recached_l2
    # Another table seen from another viewpoint: the static layout itself moved.
    other_scene = np.ascontiguousarray(structured_frames(1, 72, 96, seed=7)[0][::-1])
    _, stats = rt.step(obs(other_scene))
    assert stats.recached_l1 and stats.recached_l2


def test_max_static_age_refreshes_an_unchanged_scene(model, frames):
    rt = build_runtime(model, "dysta", {"max_static_age": 2}, history=1)
    refreshed = [rt.step(obs(frames[0]))[1].recached_l1 for _ in range(5)]
    assert refreshed == [True, False, True, False, True]


def test_vla_cache_reuses_unchanged_tokens_exactly(model, frames):
    _, full = run(model, "full", None, [frames[0]] * 3)
    rt, cached = run(model, "vla_cache", {"exclude_top_fraction": 0.25}, [frames[0]] * 3)
    n_visual = rt.spec.tokens_per_frame * rt.spec.history
    tail = tail_length(rt)
    assert cached[0][1].recomputed_tokens == n_visual + tail
    # Unchanged frames: all but the excluded task-relevant quarter are reused.
    assert cached[1][1].recomputed_tokens == n_visual - round(0.75 * n_visual) + tail
    for (a, _), (b, _) in zip(full, cached):
        np.testing.assert_allclose(b.actions, a.actions, atol=TOL)
    assert cached[1][1].flops_ratio < 0.7


def test_gotohunt_local_and_strided_layers_cut_flops(model, frames):
    _, results = run(model, "gotohunt", {"num_anchors": 4, "sigma": 2}, frames[:4])
    assert results[-1][1].flops_ratio < 0.95
    assert strided_patches(4, 1, 2).tolist() == [0, 2, 8, 10]
    assert strided_patches(4, 2, 1).tolist() == list(range(32))


def test_local_attention_block_batched_equals_dense_masked_attention():
    torch.manual_seed(0)
    frames_, n, tail, heads, kv_heads, d = 3, 5, 2, 4, 2, 8
    q_len = frames_ * n + tail
    q = torch.randn(1, heads, q_len, d)
    k, v = torch.randn(1, kv_heads, q_len, d), torch.randn(1, kv_heads, q_len, d)
    group = torch.cat([torch.arange(frames_).repeat_interleave(n), torch.full((tail,), -1)])
    order = torch.arange(q_len)
    plan = AttentionPlan(query_order=order, layer_modes=["local"], query_group=group, key_group=group)
    module = type("M", (), {"layer_idx": 0})()
    out, _ = plan_attention(module, q, k, v, None, scaling=d**-0.5, attention_plan=plan)
    same_frame = (group[:, None] == group[None, :]) | (group[:, None] < 0)
    mask = same_frame & (order[None, :] <= order[:, None])
    logits = q @ repeat_kv(k, 2).transpose(-1, -2) * d**-0.5
    expected = logits.masked_fill(~mask, float("-inf")).softmax(-1) @ repeat_kv(v, 2)
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)
    assert plan.attended_pairs == int(mask.sum())


def test_learned_dysta_uses_random_modules_with_a_log_line_and_keeps_counts(model, frames, caplog):
    with caplog.at_level(logging.WARNING):
        rt, results = run(model, "dysta", {"gate": "learned"}, frames[:3])
    assert "random" in caplog.text
    n = rt.spec.tokens_per_frame
    for _, stats in results:
        assert stats.static_l1_tokens == round(0.6 * n) and stats.static_l2_tokens == round(0.3 * n)
    gate = model.recache_gate(rt.strategy.reference[None], rt.frames[-1].features[None])
    assert gate.shape == (1, 2) and bool(((gate >= 0) & (gate <= 1)).all())


def test_dysta_losses_are_finite_and_differentiable(model):
    features = torch.randn(4, model.cfg.tokens_per_frame, model.cfg.vision.width, requires_grad=True)
    logits = model.recache_gate.logits(features, features.flip(0))
    loss = gate_loss(logits, torch.tensor([0.0, 1.0, 5.0, 20.0]), lam=0.1) + info_nce(
        features, features + 0.01
    )
    loss.backward()
    assert torch.isfinite(loss) and features.grad is not None


@pytest.mark.parametrize("name", available_strategies())
def test_strategy_yaml_matches_the_parameter_dataclass(name):
    import dataclasses
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "config" / "strategies" / f"{name}.yaml"
    values = yaml.safe_load(path.read_text())
    params_class = STRATEGIES[name].Params
    defaults = {
        f.name: (f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(params_class)
    }
    assert values == defaults  # every key documented, the same defaults for nodes and bench
    params_class.from_dict(values, name)


def test_bfloat16_runs_every_strategy_close_to_float32(frames):
    reference = run(build_model("tiny", seed=0)[0], "full", None, frames[:2])[1][-1][0].actions
    model16 = build_model("tiny", dtype="bfloat16", seed=0)[0]
    for name in available_strategies():
        chunk = run(model16, name, None, frames[:2])[1][-1][0]
        assert chunk.actions.dtype == np.float32 and np.isfinite(chunk.actions).all()
        assert np.abs(chunk.actions - reference).max() < 0.25


@torch.inference_mode()
def test_learned_gate_decides_refreshes(frames):
    model = build_model("tiny", seed=0)[0]
    rt = build_runtime(model, "dysta", {"gate": "learned"}, history=2)
    for bias, expected in ((20.0, True), (-20.0, False)):  # gate probability ~1, then ~0
        for head in model.recache_gate.heads:
            head.bias.fill_(bias)
        rt.reset()
        refreshed = [rt.step(obs(image))[1].recached_l1 for image in frames[:3]]
        assert refreshed == [True, expected, expected]
