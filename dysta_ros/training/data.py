"""Demonstrations for behaviour cloning: expert episodes from the sim or from rosbags.

Every demonstration is stored as the model sees it: each camera cropped and resized by the
runtime's own `prepare_observation` (kept as uint8, which that conversion maps back exactly),
the joint state, and for every step the expert's next `horizon` joint targets (the label).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from dysta_ros.errors import ConfigError
from dysta_ros.policy.preprocess import prepare_observation
from dysta_ros.types import Observation


@dataclass
class Demo:
    """One expert episode, step by step."""

    pixels: np.ndarray  # (N, C, 3, S, S) uint8: the runtime's crop and resize
    states: np.ndarray  # (N, D) float32 measured joint positions
    chunks: np.ndarray  # (N, H, A) float32 the expert's next H targets from each step
    instruction: str
    task: str
    source: str  # "sim:reach:7" or the bag path and episode index
    # pixels above are the own VLA's view; a SmolVLA demo holds the raw frames (N, C, H, W, 3)
    # uint8 instead, preprocessed per batch by SmolVLA's own code (training/smolvla.py)

    def __len__(self) -> int:
        return len(self.states)


def observation_pixels(obs: Observation, camera_names: list[str], image_size: int, state_dim: int):
    """Return the observation as the runtime preprocesses it: uint8 pixels (C, 3, S, S), state."""
    pixels, state, _ = prepare_observation(obs, camera_names, image_size, state_dim)
    return np.rint((pixels + 1.0) * 127.5).astype(np.uint8), state


def pixels_to_model(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1], SigLIP's normalisation (as prepare_observation)."""
    return pixels.float() / 127.5 - 1.0


def collect_sim_demos(
    tasks: list[str],
    episodes: int,
    camera_names: list[str],
    image_size: int,
    horizon: int,
    seed_start: int = 0,
    action_noise: float = 0.03,
    render_size: int = 128,
    frames: Callable[[Observation], np.ndarray] | None = None,
) -> list[Demo]:
    """Run the scripted expert for `episodes` seeds per task, perturbing what it executes.

    The label is always the expert's clean plan from the measured state; the executed target
    gets seeded Gaussian noise (std drawn per episode up to `action_noise` rad), so the demos
    cover the states a learned policy drifts into and show how to recover from them.
    `frames` (observation -> uint8 array) replaces what is stored per step as pixels; by
    default the own VLA's preprocessed view of `camera_names`.
    """
    from dysta_ros.sim.env import SimConfig, SimEnv
    from dysta_ros.sim.expert import ExpertConfig, ScriptedExpert

    env = SimEnv(SimConfig(image_width=render_size, image_height=render_size))
    expert = ScriptedExpert(env, ExpertConfig(horizon=horizon))
    joints = len(env.arm.joints)
    demos: list[Demo] = []
    try:
        jobs = [(task, seed_start + i) for i in range(episodes) for task in tasks]
        for task, seed in tqdm(jobs, desc="expert episodes", unit="ep"):
            rng = np.random.default_rng([seed, 7])
            noise = rng.uniform(0.0, action_noise)
            observation = env.reset(task, seed)
            pixels, states, chunks = [], [], []
            while not env.outcome.done:
                image, state = observation_pixels(observation, camera_names, image_size, joints) \
                    if frames is None else (frames(observation), observation.state.astype(np.float32))
                plan = expert.plan(state.astype(np.float64), horizon)  # (H, 6)
                pixels.append(image)
                states.append(state)
                chunks.append(plan)
                observation, _ = env.step(plan[0] + rng.normal(0.0, noise, plan.shape[1]))
            demos.append(Demo(np.stack(pixels), np.stack(states), np.stack(chunks).astype(np.float32),
                              env.task.instruction, task, f"sim:{task}:{seed}"))
    finally:
        env.close()
    return demos


def bag_demos(paths: list[str], camera_names: list[str], image_size: int, horizon: int,
              topic_map: str = "sim_arm") -> list[Demo]:
    """Read recorded expert episodes from rosbags; a step's label is the recorded targets ahead.

    `topic_map` (a name in config/bag_topics/ or a YAML path) says where the bags keep cameras,
    joint states and actions; only the cameras in `camera_names` are needed.
    """
    from dysta_ros.bags.episodes import check_bag, load_episodes
    from dysta_ros.bags.topic_map import TopicMap

    topics = TopicMap.load(topic_map).for_cameras(camera_names)
    if missing := sorted(set(camera_names) - set(topics.cameras)):
        raise ConfigError(f"topic map {topics.source} has no camera {missing}; the model reads "
                          f"{camera_names}, the map has {sorted(topics.cameras)}")
    for path in paths:  # every bag before any is read: a wrong map fails at once, naming it
        check_bag(path, topics)
    demos = []
    for path in paths:
        for episode in tqdm(load_episodes(path, topics), desc=f"bag {path}", unit="ep"):
            dt = float(np.median(np.diff(episode.times))) if len(episode) > 1 else 0.1
            joints = episode.states.shape[1]
            pixels, states, chunks = [], [], []
            for step, observation in enumerate(episode.observations()):
                image, state = observation_pixels(observation, camera_names, image_size, joints)
                ahead = episode.recorded_actions(episode.times[step] + dt * np.arange(horizon))  # (H, A)
                valid = np.isfinite(ahead).all(axis=1)
                if not valid[0]:
                    continue  # no command in force yet: nothing to imitate at this step
                last = np.flatnonzero(valid)[-1]
                ahead[last + 1 :] = ahead[last]  # the robot holds the last command after the end
                pixels.append(image)
                states.append(state)
                chunks.append(ahead)
            if pixels:
                demos.append(Demo(np.stack(pixels), np.stack(states), np.stack(chunks).astype(np.float32),
                                  episode.instruction, "bag", f"{path}#{episode.index}"))
    if not demos:
        raise ConfigError(f"bags: {paths} hold no episode with recorded actions")
    return demos


def normalisation_stats(demos: list[Demo]) -> dict[str, list[float]]:
    """Mean and std of states and actions over all demos (std floored: a joint may never move)."""
    states = np.concatenate([d.states for d in demos])
    actions = np.concatenate([d.chunks.reshape(-1, d.chunks.shape[-1]) for d in demos])
    return {
        "state_mean": states.mean(0).tolist(),
        "state_std": np.maximum(states.std(0), 1e-3).tolist(),
        "action_mean": actions.mean(0).tolist(),
        "action_std": np.maximum(actions.std(0), 1e-3).tolist(),
    }
