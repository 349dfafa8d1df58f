"""Hostile and corrupt files: checkpoints, bags and YAML are refused with a clear error; nothing is unpickled.

Every pickle here carries a canary: unpickling it creates a marker file. The canary is shown
to be live once (so the test could fail); afterwards the marker must never appear, whatever
the loaders are handed.
"""

from __future__ import annotations

import json
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dysta_ros.errors import BagError, CheckpointError, ConfigError
from dysta_ros.policy.checkpoint import load_checkpoint, save_checkpoint
from dysta_ros.policy.runtime import build_model, build_runtime


class Canary:
    """Unpickling this creates `marker`: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def canary_pickle(marker: Path) -> bytes:
    return pickle.dumps({"model": Canary(marker)}, protocol=4)


@pytest.fixture(scope="module")
def tiny_model():
    return build_model("tiny", seed=0)[0]


@pytest.fixture
def checkpoint(tmp_path, tiny_model):
    return save_checkpoint(tmp_path / "ckpt", tiny_model)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "unpickled.marker"
    live = tmp_path / "live.marker"
    pickle.loads(canary_pickle(live))  # noqa: S301 - our own canary, to show it is live
    assert live.exists()
    yield path
    assert not path.exists(), "something unpickled a hostile file"


def edit_config(directory: Path, change):
    path = directory / "config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2, 3]", "missing key 'policy'"),
    ('{"format": "dysta_ros.policy/1"}', "missing key 'policy'"),
    ('{"policy": {"vision": {"width": "wide"}}}', "invalid policy config"),
    ('{"policy": {"preset": "tiny", "no_such_key": 1}}', "unknown config keys"),
])
def test_bad_config_json_is_refused_naming_the_file(checkpoint, text, message):
    (checkpoint / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(checkpoint)
    assert "config.json" in str(info.value)


def test_config_that_is_not_text_is_refused(checkpoint):
    (checkpoint / "config.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("change", [
    lambda d: d.update(trust_remote_code=True),
    lambda d: d.update(auto_map={"AutoModel": "modeling_evil.EvilModel"}),
    lambda d: d.update(training={"nested": [{"trust_remote_code": True}]}),
], ids=["trust_remote_code", "auto_map", "nested"])
def test_config_asking_to_run_checkpoint_code_is_refused(checkpoint, change):
    edit_config(checkpoint, change)
    with pytest.raises(CheckpointError, match="asks to run code"):
        load_checkpoint(checkpoint)


def test_wrong_tensor_shapes_are_refused_naming_the_tensor(checkpoint):
    weights = checkpoint / "model.safetensors"
    tensors = load_file(weights)
    tensors["projector.weight"] = tensors["projector.weight"][:, :5].contiguous()
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="projector.weight"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.to(torch.int8), "is int8, not floating point"),  # cast to float: another model
    (lambda t: t.fill_(float("nan")), "holds non-finite values"),
], ids=["int8", "nan"])
def test_weights_that_are_integers_or_nan_are_refused_naming_the_tensor(checkpoint, change, message):
    weights = checkpoint / "model.safetensors"
    tensors = load_file(weights)
    tensors["projector.weight"] = change(tensors["projector.weight"])
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: key 'projector\.weight' {message}"):
        load_checkpoint(checkpoint)


def test_a_config_claiming_a_giant_model_is_refused_before_allocating_it(checkpoint):
    # 32 layers of width 4096 (~6e9 parameters): built for real, it would need ~25 GB. The
    # check runs in a process capped at 3 GB of address space, so building it cannot pass.
    edit_config(checkpoint, lambda d: d["policy"]["backbone"].update(width=4096, layers=32, mlp_width=16384,
                                                                     heads=32, kv_heads=8))
    script = (
        "import resource, sys\n"
        "from dysta_ros.errors import CheckpointError\n"
        "from dysta_ros.policy.checkpoint import load_checkpoint\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY))\n"
        "try:\n"
        f"    load_checkpoint({str(checkpoint)!r})\n"
        "except CheckpointError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "REFUSED" in result.stdout and "model.safetensors" in result.stdout, result.stderr[-2000:]
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY  # this process: untouched


def test_a_pickle_where_safetensors_belongs_is_refused_and_never_unpickled(checkpoint, marker):
    (checkpoint / "model.safetensors").write_bytes(canary_pickle(marker))
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors"):
        load_checkpoint(checkpoint)


def test_a_torch_save_zip_where_safetensors_belongs_is_refused_and_never_unpickled(checkpoint, marker):
    import torch

    torch.save({"weights": Canary(marker)}, checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pkl", "last.ckpt"])
def test_a_pickle_file_beside_the_weights_is_refused_and_never_unpickled(checkpoint, marker, name):
    (checkpoint / name).write_bytes(canary_pickle(marker))
    with pytest.raises(CheckpointError, match=f"{name}: pickle-format files are refused"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("content", [
    b"",
    (2**60).to_bytes(8, "little") + b"{}",  # a header length no file has
    (20).to_bytes(8, "little") + b'{"x": {"dtype": "F32"',  # truncated header
    b"\x00" * 4096,
], ids=["empty", "huge-header-length", "truncated-header", "zeros"])
def test_corrupt_safetensors_is_refused(checkpoint, content):
    (checkpoint / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(checkpoint)


def test_a_weights_file_that_is_a_device_is_refused(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.unlink()
    weights.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(checkpoint)


def test_a_corrupt_tokenizer_is_refused(checkpoint):
    (checkpoint / "tokenizer.json").write_text('{"model": {"type": "Evil"}}')
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        build_runtime(str(checkpoint))


def test_policy_node_refuses_a_hostile_checkpoint_at_configure_and_says_why(checkpoint, marker):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from dysta_ros.nodes.diagnostics import ERROR
    from dysta_ros.nodes.policy_node import PolicyNode

    (checkpoint / "model.safetensors").write_bytes(canary_pickle(marker))
    rclpy.init()
    try:
        node = PolicyNode(parameter_overrides=[Parameter("model", value=str(checkpoint))])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        entry = node.board.get("lifecycle")
        assert entry.level == ERROR and "model.safetensors" in entry.message
        assert node.runtime is None
        node.destroy_node()
    finally:
        rclpy.shutdown()


# Bags and YAML ---------------------------------------------------------------------------------

def yaml_canary(marker: Path) -> str:
    """YAML whose full (unsafe) loading would create `marker`."""
    return f"name: !!python/object/apply:builtins.open ['{marker}', 'w']\n"


def test_yaml_canary_is_live_under_an_unsafe_loader(tmp_path):
    import yaml

    live = tmp_path / "live.marker"
    yaml.unsafe_load(yaml_canary(live))  # our own canary, to show it is live
    assert live.exists()


@pytest.fixture
def bag(tmp_path):
    pytest.importorskip("rclpy")
    from bag_helpers import BagSpec, write_episode_bag

    return write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.4))


def test_bag_metadata_with_python_tags_is_refused_and_never_executed(bag, marker):
    from dysta_ros.bags.episodes import load_episodes

    (bag / "metadata.yaml").write_text(yaml_canary(marker))
    with pytest.raises(BagError, match=str(bag)):
        load_episodes(bag)


@pytest.mark.parametrize("content", [b"", b"\x89MCAP0\r\n" + bytes(100), None],
                         ids=["empty", "magic-only", "pickle"])
def test_a_bag_file_that_is_not_a_bag_is_refused(bag, marker, content):
    from dysta_ros.bags.episodes import load_episodes

    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(canary_pickle(marker) if content is None else content)
    with pytest.raises(BagError, match=str(bag)):
        load_episodes(bag)


def test_a_message_whose_bytes_are_garbage_is_refused_naming_topic_and_time(tmp_path):
    pytest.importorskip("rclpy")
    from dysta_ros.bags import BagReader, BagWriter

    path = tmp_path / "garbage"
    with BagWriter(path) as writer:
        writer.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        writer.write("/joint_states", 5, b"\x00\x01\x00\x00" + b"\xff" * 7)
    with BagReader(path) as reader:
        (message,) = list(reader.messages())
        with pytest.raises(BagError, match="/joint_states at 5 ns"):
            reader.decode(message)


def test_eval_on_a_hostile_bag_prints_one_line_and_no_traceback(bag, marker):
    (bag / "metadata.yaml").write_text(yaml_canary(marker))
    result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "eval", str(bag)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and str(bag) in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("kind", ["robots", "topic_map"])
def test_config_yaml_with_python_tags_is_refused_and_never_executed(tmp_path, marker, kind):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml_canary(marker))
    if kind == "robots":
        from dysta_ros.robot import load_robot_config

        with pytest.raises(ConfigError, match=str(path)):
            load_robot_config(str(path))
    else:
        from dysta_ros.bags.topic_map import TopicMap

        with pytest.raises((ConfigError, BagError), match=str(path)):
            TopicMap.load(str(path))


# Training state ---------------------------------------------------------------------------------

@pytest.fixture
def saved_run(tmp_path):
    """A tiny training run saved after 0 steps, on synthetic demos."""
    import numpy as np

    from dysta_ros.training.data import Demo
    from dysta_ros.training.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    demos = [Demo(pixels=rng.integers(0, 255, (10, 1, 3, 64, 64), dtype=np.uint8),
                  states=rng.standard_normal((10, 6)).astype(np.float32),
                  chunks=rng.standard_normal((10, 8, 6)).astype(np.float32),
                  instruction="reach", task="reach", source=f"synthetic:{i}") for i in range(2)]
    cfg = TrainConfig(out=str(tmp_path / "run"), sim_episodes=2, steps=2, batch=2, history=2, frame_stride=1,
                      save_every=100, warmup=1, threads=1)
    Trainer(cfg, demos=demos).save()
    return cfg, demos


@pytest.mark.parametrize("name, content", [
    ("training_state.json", b"{broken"),
    ("training_state.json", b'{"step": 3}'),
    ("training_state.safetensors", None),
    ("training_state.safetensors", b"\x00" * 64),
], ids=["bad-json", "missing-keys", "pickle", "zeros"])
def test_a_corrupt_training_state_refuses_resume_naming_the_file(saved_run, marker, name, content):
    from dysta_ros.training.train import Trainer

    cfg, demos = saved_run
    (Path(cfg.out) / name).write_bytes(canary_pickle(marker) if content is None else content)
    with pytest.raises(CheckpointError, match=name):
        Trainer(cfg, resume=True, demos=demos)
