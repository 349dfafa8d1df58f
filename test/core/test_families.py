"""Model families: the shipped checkpoints act as before, SmolVLA's unsupported strategies are refused."""

import json

import numpy as np
import pytest

from dysta_ros.errors import CheckpointError, ConfigError
from dysta_ros.policy.families import family_of
from dysta_ros.policy.runtime import build_runtime
from dysta_ros.types import Observation

REFERENCE = "test/data/family_reference_actions.npz"
SMOLVLA = "test/data/smolvla_tiny/checkpoint"


def seeded_observation(rng, spec, stamp):
    images = {c: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for c in spec.camera_names}
    return Observation(stamp=stamp, images=images, state=rng.normal(size=spec.state_dim) * 0.1,
                       instruction="pick up the red block")


def recorded_steps(runtime, steps=3):
    """Three steps on seeded frames and states, as recorded in REFERENCE before families existed."""
    rng = np.random.default_rng(7)
    return np.stack([runtime.step(seeded_observation(rng, runtime.spec, float(step)))[0].actions
                     for step in range(steps)])


@pytest.mark.parametrize("checkpoint", ["reference", "memory"])
@pytest.mark.parametrize("strategy", ["full", "gotohunt", "dysta"])
def test_shipped_checkpoints_give_the_actions_they_gave_before(checkpoint, strategy):
    expected = np.load(REFERENCE)[f"{checkpoint}/{strategy}"]
    runtime = build_runtime(f"checkpoints/{checkpoint}", strategy, seed=0)
    np.testing.assert_allclose(recorded_steps(runtime), expected, atol=1e-6, rtol=0)


def test_family_is_read_from_config_json(tmp_path):
    assert family_of("checkpoints/reference") == "dysta_vla"
    (tmp_path / "config.json").write_text(json.dumps({"type": "smolvla"}))
    assert family_of(tmp_path) == "smolvla"
    (tmp_path / "config.json").write_text(json.dumps({"type": "pi0"}))
    with pytest.raises(CheckpointError, match=r"config.json: key 'type' is 'pi0'.*'smolvla'"):
        build_runtime(str(tmp_path))


@pytest.mark.parametrize("strategy, reason", [
    ("gotohunt", "gotohunt needs history frames; SmolVLA is single-frame"),
    ("dysta_gotohunt", "needs history frames"),
])
def test_smolvla_refuses_strategies_it_cannot_run_before_loading(tmp_path, strategy, reason):
    # Refused from config.json alone: no weights are needed to say why.
    (tmp_path / "config.json").write_text(json.dumps({"type": "smolvla"}))
    with pytest.raises(ConfigError, match=rf"{reason}.*smolvla runs full, dysta, vla_cache$"):
        build_runtime(str(tmp_path), strategy)


def test_explicit_noise_replaces_the_seeded_noise():
    runtime = build_runtime("checkpoints/reference", "full", seed=0)
    seeded = recorded_steps(runtime, 1)
    runtime.reset()
    again = recorded_steps_with_noise(runtime, runtime.noise(0))
    np.testing.assert_array_equal(again, seeded[0])
    runtime.reset()
    other = recorded_steps_with_noise(runtime, runtime.noise(5))
    assert np.abs(other - seeded[0]).max() > 1e-3


def recorded_steps_with_noise(runtime, noise):
    obs = seeded_observation(np.random.default_rng(7), runtime.spec, 0.0)
    return runtime.step(obs, noise=noise)[0].actions
