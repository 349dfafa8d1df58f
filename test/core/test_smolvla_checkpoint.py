"""SmolVLA loading: the real-size manifest is fully accounted for; bad checkpoints are refused."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dysta_ros.errors import CheckpointError
from dysta_ros.policy.smolvla import load_smolvla
from dysta_ros.policy.smolvla.checkpoint import map_weights
from dysta_ros.policy.smolvla.config import parse_smolvla_config, parse_vlm_config
from dysta_ros.policy.smolvla.model import SmolVLAModel

DATA = Path(__file__).parents[1] / "data"
TINY = DATA / "smolvla_tiny"
STATS = "policy_preprocessor_step_5_normalizer_processor.safetensors"


def test_smolvla_base_manifest_every_tensor_accounted_for():
    manifest = json.loads((DATA / "smolvla_base_manifest.json").read_text())
    source = Path("smolvla_base_manifest.json")
    cfg = parse_smolvla_config(manifest["policy_config_json"], source)
    vlm = parse_vlm_config(manifest["vlm_config_json_as_written_by_transformers"], source)
    with torch.device("meta"):  # 450M parameters, no memory
        model = SmolVLAModel(cfg, vlm)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    shapes = {t["key"]: tuple(t["shape"]) for t in manifest["state_dict"]}
    assert len(shapes) == manifest["num_keys"] == 500
    mapping, ignored = map_weights(expected, shapes, cfg, str(source))
    assert ignored == set(manifest["parameters_unused_at_inference"])
    assert set(mapping.values()) | ignored == set(shapes)
    used = sum(t["numel"] for t in manifest["state_dict"] if t["key"] not in ignored)
    assert used == sum(p.numel() for p in model.parameters())
    assert sum(t["numel"] for t in manifest["state_dict"]) == manifest["total_params"] == 450_046_176
    assert [i for i in range(cfg.num_vlm_layers) if not cfg.is_self_attention(i)] == manifest[
        "derived_dims"
    ]["cross_attention_expert_layers"]


@pytest.fixture
def broken(tmp_path):
    shutil.copytree(TINY / "checkpoint", tmp_path / "checkpoint")
    return tmp_path / "checkpoint"


def _load(directory):
    return load_smolvla(directory, TINY / "vlm")


def _rewrite_weights(directory, change):
    weights = load_file(str(directory / "model.safetensors"))
    change(weights)
    save_file(weights, str(directory / "model.safetensors"))


def test_pickle_file_is_refused_unopened(broken):
    (broken / "model.safetensors").rename(broken / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: pickle file.*never unpickled"):
        _load(broken)


def test_a_sharded_checkpoint_is_refused_saying_so(broken):
    weights = load_file(str(broken / "model.safetensors"))
    (broken / "model.safetensors").unlink()
    half = sorted(weights)[: len(weights) // 2]
    shards = {"model-00001-of-00002.safetensors": {k: weights[k] for k in half},
              "model-00002-of-00002.safetensors": {k: v for k, v in weights.items() if k not in half}}
    for name, part in shards.items():
        save_file(part, str(broken / name))
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing; the directory holds shards"):
        _load(broken)


def test_missing_tensor_is_named(broken):
    key = "model.vlm_with_expert.lm_expert.layers.1.self_attn.k_proj.weight"
    _rewrite_weights(broken, lambda w: w.pop(key))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: missing key '{key}'"):
        _load(broken)


def test_wrong_shape_is_named(broken):
    key = "model.state_proj.weight"
    _rewrite_weights(broken, lambda w: w.__setitem__(key, torch.zeros(64, 31)))
    with pytest.raises(
        CheckpointError, match=r"'model\.state_proj\.weight' has shape \(64, 31\), expected \(64, 32\)"
    ):
        _load(broken)


def test_unknown_tensor_is_named(broken):
    _rewrite_weights(broken, lambda w: w.__setitem__("model.extra_head.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unknown key 'model\.extra_head\.weight'"):
        _load(broken)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_integer_weights_are_refused_not_cast(broken, dtype):
    # a quantized tensor cast to float would run as another model, silently
    key = "model.state_proj.weight"
    _rewrite_weights(broken, lambda w: w.__setitem__(key, w[key].to(dtype)))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"key '{key}' is {name}, not floating point"):
        _load(broken)


def test_half_precision_weights_load(broken):
    _rewrite_weights(broken, lambda w: w.update({k: v.half() for k, v in w.items()}))
    assert _load(broken).spec.dtype_layout == {"float16": len(load_file(str(broken / "model.safetensors")))}


def test_nan_stats_are_refused(broken):
    stats = load_file(str(broken / STATS))
    stats["observation.state.std"][2] = float("nan")
    save_file(stats, str(broken / STATS))
    with pytest.raises(CheckpointError, match=rf"{STATS}: key 'observation.state.std' holds non-finite"):
        _load(broken)


def test_wrong_type_is_refused(broken):
    config = json.loads((broken / "config.json").read_text())
    config["type"] = "pi0"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: key 'type' is 'pi0'"):
        _load(broken)


def _set(path, *keys_and_value):
    """Return a change setting data[k1][k2]... = value in a JSON file of the checkpoint."""
    *keys, value = keys_and_value

    def change(directory):
        data = json.loads((directory / path).read_text())
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        (directory / path).write_text(json.dumps(data))
    return change


CAMERA = "observation.images.front"


@pytest.mark.parametrize("change, message", [
    (_set("config.json", "input_features", CAMERA, "shape", 3), rf"input_features\['{CAMERA}'\] needs"),
    (_set("config.json", "input_features", "observation.state", "shape", [0]), "needs a 'type'"),
    (_set("config.json", "input_features", "observation.state", "type", ["STATE"]), "needs a 'type'"),
    (_set("config.json", "output_features", "action", [6]), r"output_features\['action'\] needs"),
    (_set("config.json", "output_features", "action", {"type": "ACTION"}), "'shape' .a list"),
    (_set("config.json", "expert_width_multiplier", -1), "'expert_width_multiplier' must be a number > 0"),
    (_set("config.json", "min_period", 0), "'min_period' must be a number > 0"),
    (_set("config.json", "resize_imgs_with_padding", [True, True]), "must be \\[width, height\\]"),
    (_set("policy_preprocessor.json", "steps", 5, "config", []), "'config' that is not an object"),
    (_set("policy_preprocessor.json", "steps", 5, "config", "eps", "abc"), "has eps 'abc'"),
], ids=["camera-shape-int", "state-shape-0", "type-list", "action-list", "action-no-shape",
        "width-negative", "min-period-0", "resize-bools",
        "processor-config-list", "processor-eps-text"])
def test_malformed_config_values_are_refused_naming_the_file(broken, change, message):
    change(broken)
    with pytest.raises(CheckpointError, match=message) as caught:
        _load(broken)
    assert str(broken) in str(caught.value)


def test_missing_backbone_says_where_it_looked(broken, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    config = json.loads((broken / "config.json").read_text())
    config["vlm_model_name"] = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"not found \(looked in: .*HF cache models--HuggingFaceTB--"):
        load_smolvla(broken)
    # the offline HF cache layout is found without a vlm argument
    snapshot = tmp_path / "hub/models--HuggingFaceTB--SmolVLM2-500M-Video-Instruct/snapshots/abc"
    shutil.copytree(TINY / "vlm", snapshot)
    assert load_smolvla(broken).files.vlm_dir == snapshot


def test_relative_vlm_model_name_resolves_from_the_checkpoint(tmp_path):
    shutil.copytree(TINY, tmp_path / "fixture")
    config = tmp_path / "fixture/checkpoint/config.json"
    data = json.loads(config.read_text())
    data["vlm_model_name"] = "../vlm"
    config.write_text(json.dumps(data))
    assert (
        load_smolvla(tmp_path / "fixture/checkpoint").files.vlm_dir
        == tmp_path / "fixture/checkpoint/../vlm"
    )


@pytest.mark.parametrize("count, cameras", [(1, ["main"]), (0, ["main", "empty_camera_0"]),
                                            (10**12, ["main"])])
def test_placeholder_cameras_are_recognised_by_name_for_any_count(count, cameras):
    path = DATA / "smolvla_sim/checkpoint/config.json"
    data = json.loads(path.read_text())
    data["empty_cameras"] = count  # 10**12 once enumerated every placeholder name: it never ended
    assert list(parse_smolvla_config(data, path).camera_names) == cameras
