"""Training builds DySta's context with the layout inference runs; a checkpoint records its layout."""

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dysta_ros.errors import CheckpointError, ConfigError
from dysta_ros.evaluation.scenes import structured_frames
from dysta_ros.policy.checkpoint import load_checkpoint, read_config
from dysta_ros.policy.runtime import build_runtime
from dysta_ros.tokens.base import StepContext
from dysta_ros.tokens.dysta import DystaLayout, DystaParams
from dysta_ros.training import train
from dysta_ros.training.data import collect_sim_demos
from dysta_ros.training.objectives import backbone_records, dysta_context, training_losses
from dysta_ros.training.train import STATE_JSON, TrainConfig, Trainer
from dysta_ros.types import Observation

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
INSTRUCTION = "touch the red cube"
# The static cache built at the first step is kept: later steps run on a stale reference frame.
KEEP_STATIC = {"gate": "change", "delta_l1": 10.0, "delta_l2": 10.0, "max_static_age": 0}


@pytest.fixture(scope="module")
def frames():
    """Unrelated frames: any swap of two slots' tokens changes the context."""
    return np.random.default_rng(3).integers(0, 256, (4, 72, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def demos():
    return collect_sim_demos(["reach"], 2, ["main"], image_size=64, horizon=8, seed_start=0)


def observation(image, step):
    state = np.linspace(-0.2, 0.3, 6) + 0.01 * step
    return Observation(stamp=0.1 * step, images={"main": image}, state=state, instruction=INSTRUCTION)


def tiny_config(out, **changes) -> TrainConfig:
    values = dict(out=str(out), sim_episodes=2, steps=2, batch=4, history=2, frame_stride=2,
                  save_every=100, warmup=1, threads=1)
    return TrainConfig(**{**values, **changes})


@torch.no_grad()
def training_forward(rt, reference, state):
    """Actions and per-layer K/V of training's one-forward DySta context of the runtime's window."""
    model, strategy = rt.model, rt.strategy
    l1, l2, dynamic = strategy.groups
    tokens = torch.stack([frame.tokens for frame in rt.frames])[None]  # (1, T, N, W)
    static = reference.tokens[torch.cat([l1, l2])][None]  # (1, s1 + s2, W): what the cache was built from
    text = rt._text_embeds(INSTRUCTION)[None]  # (1, n_text, W)
    layout = DystaLayout(rt.spec.tokens_per_frame, rt.history, text.shape[1], strategy.params.cache_language)
    groups = (l1[None], l2[None], dynamic[None])
    embeds, positions = dysta_context(layout, static, groups, tokens, text, model.embed_state(state)[None])
    records = backbone_records(model, embeds, positions)
    normalised = model.sample_actions(records, layout.full_length, rt.noise(rt.sequence - 1))
    return model.actions_to_robot(normalised), records


@torch.inference_mode()
def inference_records(rt, state):
    """Per-layer K/V of the strategy's context (cached prefix + this step's tokens) for the window."""
    ctx = StepContext(model=rt.model, frames=list(rt.frames), text=rt._text_embeds(INSTRUCTION),
                      state=rt.model.embed_state(state), grid=rt.model.cfg.vision.grid, cameras=1)
    return rt.strategy.build_prefix(ctx).records


@pytest.mark.parametrize("model, cache_language", [
    (str(CHECKPOINTS / "reference"), False),
    (str(CHECKPOINTS / "memory"), False),
    ("tiny", True),
])
def test_training_context_gives_the_actions_the_strategy_runs(model, cache_language, frames):
    rt = build_runtime(model, "dysta", {**KEEP_STATIC, "cache_language": cache_language})
    for step, image in enumerate(frames):
        obs = observation(image, step)
        chunk, stats = rt.step(obs)
        if step == 0:
            reference = rt.frames[-1]
        else:
            assert not stats.recached_l1 and not stats.recached_l2
        mean, std = rt.model.normalization_tensors("state", rt.model.cfg.state_dim)
        state = (torch.as_tensor(obs.state, dtype=torch.float32) - mean) / std
        actions, records = training_forward(rt, reference, state)
        np.testing.assert_allclose(chunk.actions, actions, atol=1e-5)
        # Token by token, the same K/V in the same order: the same tokens at the same positions.
        for layer, (keys, values) in inference_records(rt, state).items():
            torch.testing.assert_close(records[layer][0], keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(records[layer][1], values, atol=1e-5, rtol=1e-5)


def test_cache_language_changes_only_the_dysta_context_of_training(tmp_path, demos):
    trainer = Trainer(tiny_config(tmp_path), demos=demos)
    batch = trainer.sampler.sample(np.random.default_rng(0), 4)
    losses = {}
    for cache_language in (False, True):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            losses[cache_language] = training_losses(trainer.model, batch, 0.1, generator,
                                                     DystaParams(cache_language=cache_language))
    assert losses[False].task_full == losses[True].task_full
    assert losses[False].task_dysta != losses[True].task_dysta


def layout_warnings(caplog, model, params):
    """Step a runtime twice (static cache kept); return the layout warnings it logged, the last stats."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dysta_ros.tokens.dysta"):
        runtime = build_runtime(model, "dysta", {**KEEP_STATIC, **params})
        for step, image in enumerate(structured_frames(2, 72, 96, seed=5)):
            chunk, stats = runtime.step(observation(image, step))
            assert np.isfinite(chunk.actions).all()
    return [r.getMessage() for r in caplog.records if "trained on the layout" in r.getMessage()], stats


def test_checkpoint_trained_with_cache_language_records_it_and_runs_with_it(tmp_path, demos, caplog):
    Trainer(tiny_config(tmp_path, dysta={"cache_language": True}), demos=demos).run()
    _, extra = read_config(tmp_path)
    assert extra["training"]["dysta"] == {"l1_fraction": 0.6, "l2_fraction": 0.3, "cache_language": True}
    assert load_checkpoint(tmp_path)[0].trained_dysta_layout["cache_language"] is True
    warnings, stats = layout_warnings(caplog, str(tmp_path), {"cache_language": True})
    assert warnings == []
    assert stats.recomputed_tokens == stats.dynamic_tokens + 1  # the language is cached: dynamic + state
    warnings, _ = layout_warnings(caplog, str(tmp_path), {})
    assert len(warnings) == 1 and "cache_language=True but runs with cache_language=False" in warnings[0]


def test_checkpoints_from_before_the_option_count_as_the_default_layout(caplog):
    reference = str(CHECKPOINTS / "reference")
    assert "dysta" not in read_config(reference)[1]["training"]
    assert layout_warnings(caplog, reference, {})[0] == []
    warnings, _ = layout_warnings(caplog, reference, {"cache_language": True, "l1_fraction": 0.5})
    assert len(warnings) == 1 and "cache_language=False, l1_fraction=0.6" in warnings[0]
    assert layout_warnings(caplog, "tiny", {"cache_language": True})[0] == []  # a preset trained nothing


def test_a_bad_recorded_layout_is_refused_naming_the_file(tmp_path):
    shutil.copytree(CHECKPOINTS / "reference", tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["training"]["dysta"] = {"gate": "learned"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: training.dysta: expected a mapping of l1_frac"):
        load_checkpoint(tmp_path)


def parse(*argv):
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return train.train_config(parser.parse_args(["--sim-episodes", "1", "--out", "x", *argv]))


def test_train_command_takes_the_layout_and_names_what_it_refuses():
    assert parse().dysta == {"l1_fraction": 0.6, "l2_fraction": 0.3, "cache_language": False}
    cfg = parse("--param", "dysta.cache_language=true", "--param", "dysta.l1_fraction=0.5")
    assert cfg.dysta == {"l1_fraction": 0.5, "l2_fraction": 0.3, "cache_language": True}
    with pytest.raises(ConfigError, match="act at inference only"):
        parse("--param", "dysta.delta_l1=0.1")
    with pytest.raises(ConfigError, match="l1_fraction must be in"):
        parse("--param", "dysta.l1_fraction=2")
    with pytest.raises(ConfigError, match="strategy 'full'"):
        parse("--param", "full.cache_language=true")


def test_resume_refuses_another_layout_and_accepts_runs_from_before_the_option(tmp_path, demos):
    Trainer(tiny_config(tmp_path), demos=demos).run(until=1)
    with pytest.raises(ConfigError, match="dysta"):
        Trainer(tiny_config(tmp_path, dysta={"cache_language": True}), resume=True, demos=demos)
    state = json.loads((tmp_path / STATE_JSON).read_text())
    del state["config"]["dysta"]  # as a run saved before the layout was an option
    (tmp_path / STATE_JSON).write_text(json.dumps(state))
    assert Trainer(tiny_config(tmp_path), resume=True, demos=demos).step == 1
