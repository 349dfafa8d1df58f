"""`dysta-ros info`: a checkpoint's family, features and weights, from its files, for both families."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from dysta_ros.cli import main
from dysta_ros.errors import CheckpointError
from dysta_ros.info import checkpoint_info
from dysta_ros.policy.checkpoint import load_checkpoint

SMOLVLA_CONFIG = {
    "type": "smolvla",
    "input_features": {"observation.images.top": {"type": "VISUAL", "shape": [3, 480, 640]},
                       "observation.state": {"type": "STATE", "shape": [7]}},
    "output_features": {"action": {"type": "ACTION", "shape": [7]}},
    "chunk_size": 50, "n_action_steps": 50, "num_steps": 10, "max_state_dim": 32, "max_action_dim": 32,
    "resize_imgs_with_padding": [512, 512],
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
}


def test_own_checkpoint_info_matches_the_loaded_model(capsys):
    info = checkpoint_info("checkpoints/reference")
    model, _ = load_checkpoint("checkpoints/reference")
    assert info["family"] == "dysta_vla" and info["camera_names"] == list(model.cfg.camera_names)
    assert info["parameters"] == sum(t.numel() for t in model.state_dict().values())
    assert (info["chunk_size"], info["dt"]) == (model.cfg.horizon, model.cfg.dt)
    assert main(["info", "checkpoints/reference", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["parameters"] == info["parameters"]


def test_lerobot_checkpoint_info_from_config_and_header(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(SMOLVLA_CONFIG))
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float16), "c": np.zeros(2, np.float16)},
              str(tmp_path / "model.safetensors"))
    info = checkpoint_info(tmp_path)
    assert info["family"] == "smolvla" and info["camera_keys"] == ["observation.images.top"]
    assert info["camera_names"] == ["top"] and (info["state_dim"], info["action_dim"]) == (7, 7)
    assert (info["chunk_size"], info["flow_steps"]) == (50, 10)
    assert info["parameters"] == 12 + 5 + 2 and info["dtype_layout"] == {"F32": 1, "F16": 2}
    strategies = info["strategies"]
    assert strategies["full"] == "exact"
    assert strategies["gotohunt"].startswith("refused: gotohunt needs history")
    assert strategies["vla_cache"].startswith("approximated:") and "bidirectional" in strategies["dysta"]
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "observation.images.top" in out and "vla_cache       approximated:" in out


def test_info_refuses_a_missing_or_truncated_weights_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLVLA_CONFIG))
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        checkpoint_info(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors"):
        checkpoint_info(tmp_path)
    save_file({"a": np.zeros((3, 4), np.float32)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-4])  # header whole, tensor data cut short
    with pytest.raises(CheckpointError, match=rf"safetensors: truncated: its header lists {len(data)} bytes"):
        checkpoint_info(tmp_path)
