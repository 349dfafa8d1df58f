"""The shipped checkpoints: valid config, small, trained DySta parts, plan sensible actions."""

from pathlib import Path

import numpy as np
import pytest

from dysta_ros.errors import ConfigError
from dysta_ros.policy.checkpoint import load_checkpoint, read_config
from dysta_ros.policy.runtime import build_runtime
from dysta_ros.sim.env import SimEnv

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
SHIPPED = {"reference": "reach", "memory": "memory"}  # checkpoint -> a task it was trained on


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_is_valid_and_small(name):
    directory = CHECKPOINTS / name
    config, extra = read_config(directory)
    assert len(config.state_mean) == config.state_dim and len(config.action_std) == config.action_dim
    training = extra["training"]
    assert SHIPPED[name] in training["tasks"] and training["step"] > 0 and training["frame_stride"] >= 1
    assert config.history == training["history"]
    size = sum(p.stat().st_size for p in directory.iterdir())
    assert size < 8 * 1024 * 1024  # a few MB, committed to the repository
    model, _ = load_checkpoint(directory)
    assert model.has_learned_dysta  # the Disentangler and RecacheGate were trained, not random


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_plans_joint_targets_near_the_arm(name):
    runtime = build_runtime(str(CHECKPOINTS / name), strategy="full")
    env = SimEnv()
    try:
        observation = env.reset(SHIPPED[name], 100_000)
        chunk, _ = runtime.step(observation)
    finally:
        env.close()
    assert chunk.actions.shape == (runtime.spec.horizon, 6) and np.isfinite(chunk.actions).all()
    # A trained policy moves a little per step from where the arm is, not somewhere arbitrary.
    assert np.abs(chunk.actions[0] - observation.state).max() < 0.3


def test_dysta_gate_auto_uses_the_learned_gate_only_where_it_was_trained():
    with SimEnv() as env:
        observation = env.reset("reach", seed=7)
    decided = {}
    for model in ("tiny", str(CHECKPOINTS / "reference")):
        runtime = build_runtime(model, "dysta")  # gate: auto, the YAML default
        runtime.step(observation)
        decided[model] = runtime.strategy.learned
    assert decided == {"tiny": False, str(CHECKPOINTS / "reference"): True}
    forced = build_runtime("tiny", "dysta", {"gate": "learned"})
    forced.step(observation)
    assert forced.strategy.learned
    with pytest.raises(ConfigError, match="choose one of: auto, change, learned"):
        build_runtime("tiny", "dysta", {"gate": "sometimes"})
