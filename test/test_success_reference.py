"""The shipped reference checkpoint: valid config, small, trained DySta parts, runs in the sim."""

from pathlib import Path

import numpy as np

from dysta_ros.policy.checkpoint import load_checkpoint, read_config
from dysta_ros.policy.runtime import build_runtime
from dysta_ros.sim.env import SimEnv

REFERENCE = Path(__file__).resolve().parents[1] / "checkpoints" / "reference"


def test_shipped_reference_checkpoint_is_valid_and_small():
    config, extra = read_config(REFERENCE)
    assert len(config.state_mean) == config.state_dim and len(config.action_std) == config.action_dim
    training = extra["training"]
    assert "reach" in training["tasks"] and training["step"] > 0 and training["frame_stride"] >= 1
    size = sum(p.stat().st_size for p in REFERENCE.iterdir())
    assert size < 8 * 1024 * 1024  # a few MB, committed to the repository
    model, _ = load_checkpoint(REFERENCE)
    assert model.has_learned_dysta  # the Disentangler and RecacheGate were trained, not random


def test_reference_plans_joint_targets_near_the_arm():
    runtime = build_runtime(str(REFERENCE), strategy="full")
    env = SimEnv()
    try:
        observation = env.reset("reach", 100_000)
        chunk, _ = runtime.step(observation)
    finally:
        env.close()
    assert chunk.actions.shape == (runtime.spec.horizon, 6) and np.isfinite(chunk.actions).all()
    # A trained policy moves a little per step from where the arm is, not somewhere arbitrary.
    assert np.abs(chunk.actions[0] - observation.state).max() < 0.3
