"""The runtime's public API on the tiny preset: steps, errors, reset, checkpoints."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from dysta_ros.errors import CheckpointError, ConfigError, InferenceError, InputError
from dysta_ros.policy.checkpoint import load_checkpoint, save_checkpoint
from dysta_ros.policy.runtime import build_runtime
from dysta_ros.types import STAGES, Observation


def observation(seed=0, shape=(48, 80, 3), cameras=("main",), state=None):
    rng = np.random.default_rng(seed)
    images = {name: rng.integers(0, 256, shape, dtype=np.uint8) for name in cameras}
    return Observation(
        stamp=1.5,
        images=images,
        state=np.zeros(6) if state is None else state,
        instruction="pick up the red block",
    )


@pytest.fixture(scope="module")
def runtime():
    return build_runtime("tiny", "full", seed=0)


def test_step_returns_finite_chunk_and_filled_stats(runtime):
    runtime.reset()
    chunk, stats = runtime.step(observation())
    assert chunk.actions.shape == (runtime.spec.horizon, runtime.spec.action_dim)
    assert chunk.actions.dtype == np.float32 and np.isfinite(chunk.actions).all()
    assert chunk.stamp == 1.5 and chunk.dt == runtime.spec.dt and chunk.strategy == "full"
    assert set(stats.stage_ms) == set(STAGES) and stats.stage_ms["total"] > 0
    n = runtime.spec.tokens_per_frame * runtime.spec.history
    assert stats.context_tokens == stats.recomputed_tokens > n  # frames + language + state
    assert stats.flops_ratio == pytest.approx(1.0)
    assert stats.history_frames == runtime.spec.history


def test_same_seed_same_actions_and_reset_restarts_sequence():
    a = build_runtime("tiny", "full", seed=3)
    b = build_runtime("tiny", "full", seed=3)
    first = a.step(observation(1))[0].actions
    assert np.array_equal(first, b.step(observation(1))[0].actions)
    a.step(observation(2))
    a.reset()
    chunk, _ = a.step(observation(1))
    assert chunk.sequence == 0 and np.allclose(chunk.actions, first, atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda o: o.images.pop("main"), "missing camera"),
        (lambda o: o.images.update(main=o.images["main"].astype(np.float32)), "dtype"),
        (lambda o: o.images.update(main=o.images["main"][:, :, :2]), "shape"),
        (lambda o: setattr(o, "state", np.array([0, 0, np.nan, 0, 0, 0])), "non-finite"),
        (lambda o: setattr(o, "state", np.zeros(4)), "state shape"),
    ],
)
def test_bad_input_raises_input_error_and_next_step_works(runtime, bad, message):
    obs = observation()
    bad(obs)
    with pytest.raises(InputError, match=message):
        runtime.step(obs)
    chunk, _ = runtime.step(observation())
    assert np.isfinite(chunk.actions).all()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"instruction": "pick up the \ud800 block"}, "instruction is not valid text"),  # a lone surrogate
        ({"noise": np.zeros(3)}, "noise shape"),
        ({"noise": "nan"}, "noise has non-finite"),
        ({"camera": None}, "missing camera"),
        ({"stamp": float("nan")}, "stamp must be a finite"),  # the executor refused its chunk, after a step
    ],
)
def test_a_refused_input_leaves_history_and_caches_as_they_were(bad, message):
    """The next good step is the one a runtime that never saw the bad input takes."""
    refused, clean = build_runtime("tiny", "dysta", seed=4), build_runtime("tiny", "dysta", seed=4)
    for rt in (refused, clean):
        rt.step(observation(0))
    obs, noise = observation(1), bad.get("noise")
    if "instruction" in bad:
        obs.instruction = bad["instruction"]
    if "camera" in bad:
        del obs.images["main"]
    obs.stamp = bad.get("stamp", obs.stamp)
    if isinstance(noise, str):
        noise = np.full(refused.model.spec.noise_shape, np.nan)
    with pytest.raises(InputError, match=message):
        refused.step(obs, noise=noise)
    for seed in (2, 3):
        ours, our_stats = refused.step(observation(seed))
        theirs, their_stats = clean.step(observation(seed))
        assert np.array_equal(ours.actions, theirs.actions)
        assert our_stats.recached_l1 == their_stats.recached_l1 and ours.sequence == theirs.sequence


def test_explicit_noise_may_carry_its_batch_of_one():
    a, b = build_runtime("tiny", "full", seed=1), build_runtime("tiny", "full", seed=1)
    noise = a.noise(0)
    assert np.array_equal(a.step(observation(), noise=noise[None])[0].actions,
                          b.step(observation(), noise=noise)[0].actions)


def test_inference_failure_is_wrapped_and_runtime_recovers():
    rt = build_runtime("tiny", "dysta")
    rt.step(observation(0))
    original = rt.model.sample_actions
    rt.model.sample_actions = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("device lost"))
    with pytest.raises(InferenceError, match="device lost"):
        rt.step(observation(1))
    rt.model.sample_actions = original
    chunk, stats = rt.step(observation(1))
    assert np.isfinite(chunk.actions).all() and stats.recached_l1  # caches were dropped


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(ConfigError, match="full, dysta, gotohunt, vla_cache, dysta_gotohunt"):
        build_runtime("tiny", "fastest")


def test_unknown_strategy_parameter_names_allowed_ones():
    with pytest.raises(ConfigError, match="l1_fraction"):
        build_runtime("tiny", "dysta", {"l1_fractoin": 0.5})


@pytest.mark.parametrize("history", [100_000_000, -1, 2.5, True])
def test_a_history_no_window_can_hold_is_refused_before_any_step(history):
    with pytest.raises(ConfigError, match="history must be an integer in"):
        build_runtime("tiny", "full", {"history": history})
    with pytest.raises(ConfigError, match="history must be an integer in"):
        build_runtime("tiny", "dysta", history=history)


def test_overrides_change_the_spec():
    rt = build_runtime("tiny", "full", overrides={"state_dim": 7, "camera_names": ["main", "wrist"]})
    assert rt.spec.state_dim == 7 and rt.spec.camera_names == ["main", "wrist"]
    chunk, _ = rt.step(observation(shape=(30, 30, 3), cameras=("main", "wrist"), state=np.ones(7)))
    assert chunk.actions.shape == (rt.spec.horizon, rt.spec.action_dim)
    with pytest.raises(ConfigError, match="state_dimm"):
        build_runtime("tiny", overrides={"state_dimm": 7})


def test_checkpoint_round_trip_gives_same_actions(tmp_path, runtime):
    save_checkpoint(tmp_path, runtime.model, {"note": "test"})
    model, extra = load_checkpoint(tmp_path)
    assert extra["note"] == "test"
    loaded = build_runtime(str(tmp_path), "full")
    runtime.reset()
    expected = runtime.step(observation(5))[0].actions
    assert np.allclose(loaded.step(observation(5))[0].actions, expected, atol=1e-6)


def test_corrupt_checkpoints_raise_checkpoint_error_naming_the_file(tmp_path, runtime):
    save_checkpoint(tmp_path, runtime.model)
    config = tmp_path / "config.json"
    good = config.read_text()
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path)
    config.write_text(json.dumps({"format": "x"}))
    with pytest.raises(CheckpointError, match="missing key 'policy'"):
        load_checkpoint(tmp_path)
    config.write_text(good)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    tensors["projector.weight"] = tensors["projector.weight"][:, :3].contiguous()
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="projector.weight"):
        load_checkpoint(tmp_path)
    del tensors["projector.weight"]
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_checkpoint(tmp_path)


def test_flow_matching_loss_trains_every_part():
    import torch

    from dysta_ros.policy.runtime import build_model

    model, _ = build_model("tiny", seed=1)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixels": torch.rand(2, 2, 1, 3, 64, 64, generator=generator) * 2 - 1,
        "text_ids": torch.randint(0, 256, (2, 5), generator=generator),
        "state": torch.randn(2, 6, generator=generator),
        "actions": torch.randn(2, 8, 6, generator=generator),
    }
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        # The same noise and times every iteration: the loss must fall.
        loss = model.flow_matching_loss(batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        for part in (model.vision, model.projector, model.backbone, model.action_expert):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("family", ["qwen2", "gemma"])
def test_other_backbone_families_step(family):
    rt = build_runtime("tiny", "dysta", overrides={"backbone.family": family})
    assert type(rt.model.backbone).__name__.lower().startswith(family)
    for seed in range(2):
        chunk, stats = rt.step(observation(seed))
    assert np.isfinite(chunk.actions).all() and stats.static_l1_tokens > 0


def test_checkpoint_tokenizer_is_used_and_must_fit_the_embedding(tmp_path, runtime):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from dysta_ros.policy.tokenizer import FileTokenizer

    vocab = {"[UNK]": 0, "pick": 1, "up": 2, "the": 3, "red": 4, "block": 5}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.save(str(tmp_path / "words.json"))
    save_checkpoint(tmp_path / "ckpt", runtime.model, tokenizer=FileTokenizer(tmp_path / "words.json"))
    loaded = build_runtime(str(tmp_path / "ckpt"), "full")
    assert loaded.tokenizer.encode("pick up the red block") == [1, 2, 3, 4, 5]
    _, stats = loaded.step(observation())
    assert stats.context_tokens == loaded.spec.tokens_per_frame * loaded.spec.history + 5 + 1
    big = Tokenizer(models.WordLevel({f"w{i}": i for i in range(1000)}, unk_token="w0"))
    big.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        build_runtime(str(tmp_path / "ckpt"), "full")


def test_non_finite_actions_are_refused(runtime):
    import torch

    bias = runtime.model.action_expert.action_out_proj.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[0] = float("nan")
    try:
        with pytest.raises(InferenceError, match="non-finite"):
            runtime.step(observation())
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert np.isfinite(runtime.step(observation())[0].actions).all()


def test_expert_grouped_query_attention_equals_repeated_kv_attention():
    import torch
    import torch.nn.functional as F

    from dysta_ros.policy.action_expert import rope, rope_tables
    from dysta_ros.policy.attention import repeat_kv
    from dysta_ros.policy.runtime import build_model

    model, _ = build_model("tiny", seed=2)
    attn = model.action_expert.layers[0].self_attn
    b, n, p, hkv, d = 2, 8, 13, attn.kv_heads, attn.head_dim
    x = torch.randn(b, n, model.cfg.expert.width)
    prefix_k, prefix_v = torch.randn(1, hkv, p, d), torch.randn(1, hkv, p, d)
    cos, sin = rope_tables(torch.arange(p, p + n), d, attn.theta, torch.float32)
    free = torch.zeros(1, hkv, n, d)
    keys = torch.cat([prefix_k, free], 2).expand(b, -1, -1, -1).clone()
    values = torch.cat([prefix_v, free], 2).expand(b, -1, -1, -1).clone()
    out = attn(x, keys, values, cos, sin)
    q = rope(attn.q_proj(x).view(b, n, attn.heads, d).transpose(1, 2), cos, sin)
    k = rope(attn.k_proj(x).view(b, n, hkv, d).transpose(1, 2), cos, sin)
    v = attn.v_proj(x).view(b, n, hkv, d).transpose(1, 2)
    groups = attn.heads // hkv
    all_k = repeat_kv(torch.cat([prefix_k.expand(b, -1, -1, -1), k], 2), groups)
    all_v = repeat_kv(torch.cat([prefix_v.expand(b, -1, -1, -1), v], 2), groups)
    expected = attn.o_proj(F.scaled_dot_product_attention(q, all_k, all_v).transpose(1, 2).reshape(b, n, -1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["full", "dysta"])
def test_a_warmed_up_runtime_steps_as_a_fresh_one(strategy):
    """warm_up's step leaves nothing behind: no history frame, cache, or sequence number."""
    warmed, fresh = build_runtime("tiny", strategy, seed=5), build_runtime("tiny", strategy, seed=5)
    warmed.warm_up("pick up the red block")
    assert warmed.sequence == 0 and not warmed.frames
    for seed in (1, 2, 3):  # later steps read the history and the caches the first ones filled
        ours, theirs = warmed.step(observation(seed))[0], fresh.step(observation(seed))[0]
        assert ours.sequence == theirs.sequence
        assert np.allclose(ours.actions, theirs.actions, atol=1e-6)
