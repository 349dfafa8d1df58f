"""Our SmolVLA against LeRobot 0.4.4's recorded cases (test/data/smolvla_tiny*, see its README)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dysta_ros.evaluation.parity import load_cases, passed, run_cases
from dysta_ros.policy.smolvla import load_smolvla

DATA = Path(__file__).parents[1] / "data"
TINY, TINY_BF16 = DATA / "smolvla_tiny", DATA / "smolvla_tiny_bf16"


@pytest.fixture(scope="module")
def tiny():
    return load_smolvla(TINY / "checkpoint", TINY / "vlm")


@pytest.fixture(scope="module")
def tiny_cases():
    return load_cases(TINY)


def _predict(policy, meta, arrays, index, **kwargs):
    images = {n: arrays[f"case{index}.image.{n}"] for n in policy.spec.camera_names}
    return policy.predict(
        images,
        arrays[f"case{index}.state"],
        meta["cases"][index]["task"],
        noise=torch.from_numpy(arrays[f"case{index}.noise"]),
        **kwargs,
    )


@pytest.mark.parametrize("index", range(4))
def test_fp32_cases_match_lerobot(tiny, tiny_cases, index):
    meta, arrays = tiny_cases
    raw, info = _predict(tiny, meta, arrays, index, return_intermediates=True)
    ref = arrays[f"case{index}.actions_normalized"][0]
    assert np.abs(info["actions_normalized"] - ref).max() <= 1e-5
    std = tiny.files.action_normalizer.stats["std"].numpy()
    assert (np.abs(raw - arrays[f"case{index}.actions"][0]) <= 1e-5 * std).all()
    # every recorded intermediate, at 1e-5 x its largest magnitude, so a mismatch is located
    compared = 0
    for name, ours in info["intermediates"].items():
        key = f"case{index}.{name}"
        if key not in arrays:
            continue
        expected = arrays[key].astype(np.float64)
        got = ours.numpy().astype(np.float64)
        assert got.shape == expected.shape, name
        scale = max(1.0, np.abs(expected).max())
        assert np.abs(got - expected).max() <= 1e-5 * scale, name
        compared += 1
    assert compared >= (20 if index == 0 else 12)


def test_timesteps_are_exact_and_noise_padding_matters(tiny, tiny_cases):
    meta, arrays = tiny_cases
    _, info = _predict(tiny, meta, arrays, 0, return_intermediates=True)
    assert np.array_equal(info["intermediates"]["timesteps"].numpy(), arrays["case0.timesteps"])
    noise = arrays["case0.noise"].copy()
    noise[..., tiny.spec.action_dim :] = 0.0  # the padded noise dims take part
    images = {n: arrays[f"case0.image.{n}"] for n in tiny.spec.camera_names}
    _, other = tiny.predict(
        images, arrays["case0.state"], meta["cases"][0]["task"], noise=torch.from_numpy(noise[0])
    )
    assert np.abs(other["actions_normalized"] - info["actions_normalized"]).max() > 1e-2


def test_cross_attention_context_is_per_chunk(tiny, tiny_cases):
    # the re-projected prefix K/V, computed once, give what a per-step re-projection would
    meta, arrays = tiny_cases
    inputs = tiny.prepare_inputs(
        {n: arrays[f"case1.image.{n}"] for n in tiny.spec.camera_names},
        arrays["case1.state"],
        meta["cases"][1]["task"],
    )
    with torch.inference_mode():
        _, tokens = tiny.encode_images(inputs["pixels"])
        embs, pad, flags = tiny.embed_prefix(tokens, inputs)
        kv, context = tiny.prefix_forward(embs, pad, flags)
        noise = torch.from_numpy(arrays["case1.noise"])
        cached = tiny.denoise(context, pad, noise)
        again = tiny.denoise(tiny.model.expert_context(kv, pad), pad, noise)
    assert torch.equal(cached, again)
    assert np.abs(cached[0, :, :6].numpy() - arrays["case1.actions_normalized"][0]).max() <= 1e-5


def test_bf16_checkpoint_upcast_matches_float64_reference():
    policy = load_smolvla(TINY_BF16 / "checkpoint", TINY_BF16 / "vlm")
    assert policy.spec.dtype_layout == {"bfloat16": 94, "float32": 12}
    assert policy.dtype == torch.float32
    report = run_cases(TINY_BF16, policy)
    assert all(r["reference"] == "actions_normalized_float64" for r in report["cases"])
    assert report["max_error_normalized"] <= 1e-5 and passed(report)


def test_spec(tiny):
    spec = tiny.spec
    assert spec.camera_keys == ("observation.images.front", "observation.images.wrist")
    assert spec.camera_names == ("front", "wrist") and spec.resize == (128, 128)
    assert (spec.state_dim, spec.action_dim, spec.chunk_size, spec.num_steps) == (6, 6, 10, 10)
    assert (spec.max_state_dim, spec.max_action_dim) == (32, 32)
    assert spec.normalization["observation.state"] == "MEAN_STD"
    assert spec.normalization["observation.images.front"] == "IDENTITY"
    assert spec.parameter_count == 428_976 and spec.dtype_layout == {"float32": 106}
    assert spec.state_names == [] and not spec.history_frames


def test_other_configuration_matches_lerobot():
    # 3 cameras, state 7 (MIN_MAX) / action 5, max dims 16/8, GQA 6/2, 4 of 5 layers kept,
    # self-attention every 3rd expert layer, "longest" language padding, a BOS-adding tokenizer
    other = DATA / "smolvla_other"
    policy = load_smolvla(other / "checkpoint", other / "vlm")
    assert policy.spec.camera_names == ("top", "left", "right")
    assert policy.spec.normalization["observation.state"] == "MIN_MAX"
    meta, arrays = load_cases(other)
    for index in range(len(meta["cases"])):
        _, info = _predict(policy, meta, arrays, index, return_intermediates=True)
        assert info["intermediates"]["lang_tokens"].shape == arrays[f"case{index}.lang_tokens"].shape
        assert np.abs(info["actions_normalized"] - arrays[f"case{index}.actions_normalized"][0]).max() <= 1e-5
    assert passed(run_cases(other, policy))


def test_fewer_expert_layers_and_an_empty_camera_match_lerobot():
    # num_expert_layers 2 of 4 kept backbone layers (the expert runs beside layers 0 and 2, self-
    # attention at 0, cross at 2), empty_cameras 1 (LeRobot's all-padding placeholder image), one
    # real camera "main" and six joints: the sim arm's features
    sim = DATA / "smolvla_sim"
    policy = load_smolvla(sim / "checkpoint", sim / "vlm")
    assert policy.spec.camera_names == ("main",)  # the placeholder is no camera to feed
    assert len(policy.model.vlm_with_expert.lm_expert.layers) == 2
    assert policy.cfg.expert_layer_map() == [(0, 0), (2, 1)]
    meta, arrays = load_cases(sim)
    for index in range(len(meta["cases"])):
        _, info = _predict(policy, meta, arrays, index)
        assert np.abs(info["actions_normalized"] - arrays[f"case{index}.actions_normalized"][0]).max() <= 1e-5
    assert passed(run_cases(sim, policy))


@pytest.mark.parametrize("change, error", [
    ({"num_expert_layers": 3}, "num_expert_layers 3 does not divide num_vlm_layers 4"),
    ({"self_attn_every_n_layers": 3}, "backbone layer 3 has no expert layer but is a self-attention layer"),
    ({"self_attn_every_n_layers": 2, "num_expert_layers": 4},
     None),  # one expert layer per backbone layer: any schedule runs
    ({"empty_cameras": -1}, "empty_cameras must be an integer >= 0"),
])
def test_expert_layer_configurations_lerobot_cannot_run_are_refused(change, error):
    import json

    from dysta_ros.errors import CheckpointError
    from dysta_ros.policy.smolvla.config import parse_smolvla_config

    path = DATA / "smolvla_sim" / "checkpoint" / "config.json"
    data = {**json.loads(path.read_text()), **change}
    if error is None:
        assert parse_smolvla_config(data, path).expert_layer_map() == [(i, i) for i in range(4)]
        return
    with pytest.raises(CheckpointError, match=error):
        parse_smolvla_config(data, path)


def test_bad_inputs_are_refused(tiny):
    from dysta_ros.errors import InputError

    frames = {"front": np.zeros((40, 50, 3), np.uint8), "wrist": np.zeros((30, 30, 3), np.uint8)}
    with pytest.raises(InputError, match=r"missing camera\(s\) \['wrist'\]"):
        tiny.predict({"front": frames["front"]}, np.zeros(6), "x")
    with pytest.raises(InputError, match=r"images\['front'\]: expected HxWx3 uint8"):
        tiny.predict({**frames, "front": np.zeros((40, 50), np.uint8)}, np.zeros(6), "x")
    with pytest.raises(InputError, match="state: expected 6 finite values"):
        tiny.predict(frames, np.array([0, 0, 0, 0, 0, np.nan]), "x")
    # a frame so thin that fitting it to the model's size leaves no row: refused, not a torch error
    with pytest.raises(InputError, match=r"images\['front'\]: a 1x2000 frame keeps no row"):
        tiny.predict({**frames, "front": np.zeros((1, 2000, 3), np.uint8)}, np.zeros(6), "x")
    with pytest.raises(InputError, match=r"noise: expected shape \(1, 10, 32\)"):
        tiny.predict(frames, np.zeros(6), "x", noise=torch.zeros(1, 10, 6))
    raw, info = tiny.predict(frames, np.zeros(6), "x", noise=torch.zeros(10, 32))  # no batch dim is fine
    assert raw.shape == (10, 6) and np.isfinite(raw).all() and info["vision_ms"] >= 0
