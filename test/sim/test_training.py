"""Training: the loss falls, resume is exact, the checkpoint runs, DySta's losses behave."""

import json
import shutil
import signal

import numpy as np
import pytest
import torch

from dysta_ros.errors import CheckpointError, ConfigError
from dysta_ros.policy.checkpoint import read_config
from dysta_ros.policy.runtime import build_runtime
from dysta_ros.sim.env import SimEnv
from dysta_ros.tokens.learned import gate_loss, gate_prior, info_nce
from dysta_ros.training.data import collect_sim_demos
from dysta_ros.training.objectives import training_losses
from dysta_ros.interrupts import interrupts_deferred
from dysta_ros.training.train import LOG_JSON, STATE_JSON, STATE_TENSORS, TrainConfig, Trainer


@pytest.fixture(scope="module")
def demos():
    """Two short expert episodes of reach, as the tiny preset sees them."""
    return collect_sim_demos(["reach"], 2, ["main"], image_size=64, horizon=8, seed_start=0)


def tiny_config(out, **changes) -> TrainConfig:
    values = dict(out=str(out), sim_episodes=2, steps=4, batch=4, history=2, frame_stride=2,
                  save_every=100, warmup=2, threads=1)
    return TrainConfig(**{**values, **changes})


def test_demos_hold_the_runtime_view_and_expert_labels(demos):
    assert len(demos) == 2
    for demo in demos:
        assert demo.pixels.dtype == np.uint8 and demo.pixels.shape[1:] == (1, 3, 64, 64)
        assert demo.chunks.shape == (len(demo), 8, 6)
        # Labels move toward the cube: the expert's first target differs from where the arm is.
        assert np.abs(demo.chunks[:, 0] - demo.states).max() > 1e-3


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path, demos):
    trainer = Trainer(tiny_config(tmp_path, steps=40, lr=3e-3), demos=demos)
    batch = trainer.sampler.sample(np.random.default_rng(1), 4)

    def task_loss():
        torch.manual_seed(0)  # the same flow times and noise at every evaluation
        with torch.no_grad():
            losses = training_losses(trainer.model, batch, 0.1, torch.Generator().manual_seed(0))
        return float(losses.task_full + losses.task_dysta)

    before = task_loss()
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=3e-3)
    for step in range(25):
        torch.manual_seed(step)
        losses = training_losses(trainer.model, batch, 0.1, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    assert task_loss() < 0.7 * before


def test_resume_continues_with_identical_state(tmp_path, demos):
    straight = Trainer(tiny_config(tmp_path / "straight"), demos=demos)
    straight.run()
    first = Trainer(tiny_config(tmp_path / "split"), demos=demos)
    first.run(until=2)
    state = json.loads((tmp_path / "split" / STATE_JSON).read_text())
    assert state["step"] == 2 and (tmp_path / "split" / STATE_TENSORS).is_file()
    resumed = Trainer(tiny_config(tmp_path / "split"), resume=True, demos=demos)
    assert resumed.step == 2
    resumed.run()
    assert resumed.step == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["total"] for r in resumed.log] == [r["total"] for r in straight.log]
    # resumed when already done: the result is the last step's losses (it was {}, printed as nothing)
    again = Trainer(tiny_config(tmp_path / "split"), resume=True, demos=demos).run()
    assert again == resumed.log[-1] and again["step"] == 4


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_trains_under_autocast_and_saves_float32(tmp_path, demos, dtype):
    exact = Trainer(tiny_config(tmp_path / "float32", steps=2), demos=demos)
    exact.run()
    mixed = Trainer(tiny_config(tmp_path / dtype, steps=2, dtype=dtype), demos=demos)
    mixed.run()
    first = [[run.log[0][k] for k in ("task_full", "task_dysta")] for run in (mixed, exact)]
    # the same batch and noise (the seed), computed in another dtype: close, but not the same numbers
    assert np.allclose(*first, rtol=0.1) and first[0] != first[1]
    assert all(np.isfinite(r["total"]) for r in mixed.log)
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())  # master weights
    config, _ = read_config(tmp_path / dtype)
    runtime = build_runtime(str(tmp_path / dtype), strategy="full")
    assert next(runtime.model.parameters()).dtype == torch.float32  # the checkpoint is float32
    state = json.loads((tmp_path / dtype / STATE_JSON).read_text())
    assert bool(state["grad_scaler"]) == (dtype == "float16")  # loss scaling only for float16
    resumed = Trainer(tiny_config(tmp_path / dtype, steps=3, dtype=dtype), resume=True, demos=demos)
    assert resumed.precision.state_dict() == mixed.precision.state_dict()
    resumed.run()
    assert resumed.step == 3


def test_resume_refuses_a_save_cut_short(tmp_path, demos):
    # Ctrl-C between a save's files left step-3 weights beside step-2 optimizer state (5 of 12
    # SIGINTs at --save-every 1), and --resume went on from that mix as if it were one run.
    Trainer(tiny_config(tmp_path / "run"), demos=demos).run(until=2)
    later = Trainer(tiny_config(tmp_path / "later"), demos=demos)
    later.run(until=3)
    for name in ("config.json", "model.safetensors"):  # the files a cut save had replaced already
        shutil.copyfile(tmp_path / "later" / name, tmp_path / "run" / name)
    with pytest.raises(CheckpointError, match="config.json at step 3, training_state.json at step 2"):
        Trainer(tiny_config(tmp_path / "run"), resume=True, demos=demos)
    (tmp_path / "later" / LOG_JSON).write_text('[{"step": 1')  # cut while the log was written
    with pytest.raises(CheckpointError, match="not a loss log"):  # was a JSONDecodeError traceback
        Trainer(tiny_config(tmp_path / "later"), resume=True, demos=demos)


def test_an_interrupt_waits_for_the_save_then_acts(tmp_path, demos):
    trainer = Trainer(tiny_config(tmp_path), demos=demos)
    trainer.step = 1
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)  # Ctrl-C as the save starts
            trainer.save()
            saved = json.loads((tmp_path / STATE_JSON).read_text())["step"]
    assert saved == 1 == read_config(tmp_path)[1]["training"]["step"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


def test_resume_refuses_a_changed_run(tmp_path, demos):
    Trainer(tiny_config(tmp_path), demos=demos).run(until=1)
    with pytest.raises(ConfigError, match="batch"):
        Trainer(tiny_config(tmp_path, batch=6), resume=True, demos=demos)


def test_checkpoint_loads_through_build_runtime_and_steps(tmp_path, demos):
    trainer = Trainer(tiny_config(tmp_path, steps=2), demos=demos)
    trainer.run()
    config, extra = read_config(tmp_path)
    states = np.concatenate([d.states for d in demos])
    np.testing.assert_allclose(config.state_mean, states.mean(0), rtol=1e-5, atol=1e-6)
    assert extra["training"]["frame_stride"] == 2 and config.history == 2
    assert (tmp_path / "training.png").stat().st_size > 0
    runtime = build_runtime(str(tmp_path), strategy="dysta",
                            strategy_params={"gate": "learned"})
    assert runtime.model.has_learned_dysta
    env = SimEnv()
    try:
        observation = env.reset("reach", 3)
        chunk, stats = runtime.step(observation)
        chunk2, _ = runtime.step(env.step(chunk.actions[0])[0])
    finally:
        env.close()
    assert chunk.actions.shape == (8, 6) and np.isfinite(chunk.actions).all()
    assert stats.static_l1_tokens > 0 and stats.dynamic_tokens > 0
    # Actions come out in robot units: near the demos' joint targets, not in normalised units.
    mean = np.asarray(config.action_mean)
    assert np.abs(chunk2.actions - mean).max() < 10 * max(config.action_std)


def test_info_nce_prefers_matching_positives():
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(8, 16, generator=generator)
    matching = anchors + 0.05 * torch.randn(8, 16, generator=generator)
    shuffled = matching[torch.roll(torch.arange(8), 1)]
    assert info_nce(anchors, matching) < 0.1 < info_nce(anchors, shuffled)


def test_gate_prior_favours_reuse_soon_after_caching():
    dt = torch.tensor([0.0, 1.0, 5.0, 50.0])
    prior = gate_prior(dt, 0.1)
    assert prior[0] == 0 and torch.all(prior[1:] > prior[:-1]) and prior[-1] > 0.99
    small_dt = torch.zeros(64)
    reuse, refresh = torch.full((64, 2), -6.0), torch.full((64, 2), 6.0)
    generator = torch.Generator().manual_seed(0)
    assert gate_loss(reuse, small_dt, 0.1, generator=generator) < gate_loss(refresh, small_dt, 0.1,
                                                                           generator=generator)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="tasks"):
        tiny_config(tmp_path, tasks=["fly"])
    with pytest.raises(ConfigError, match="batch"):
        tiny_config(tmp_path, batch=1)
    with pytest.raises(ConfigError, match="sim_episodes"):
        tiny_config(tmp_path, sim_episodes=0)
    for name in ("seed", "sim_seed_start"):  # numpy refused them, in a traceback after the demos
        with pytest.raises(ConfigError, match=name):
            tiny_config(tmp_path, **{name: -1})
    # a traceback after the demos (cache age, noise, decay) or a silently shifted schedule (warm-up)
    for name in ("max_cache_age", "warmup", "action_noise", "weight_decay"):
        with pytest.raises(ConfigError, match=f"{name}: must be >= 0"):
            tiny_config(tmp_path, **{name: -1})
    with pytest.raises(ConfigError, match="lr"):
        tiny_config(tmp_path, lr=float("nan"))
