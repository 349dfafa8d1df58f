"""The MuJoCo sim core: scene matches the robot config, seeded tasks, success checks, expert."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dysta_ros.errors import ConfigError, InputError
from dysta_ros.evaluation.closed_loop import run_episode
from dysta_ros.sim.controller import TrajectoryFollower
from dysta_ros.sim.env import CAMERAS, SimConfig, SimEnv
from dysta_ros.sim.expert import ScriptedExpert
from dysta_ros.types import ActionChunk, StepStats
from dysta_ros.sim.tasks import MIN_SPACING, RED, WORKSPACE_X, WORKSPACE_Y, get_task

ROBOT_YAML = Path(__file__).resolve().parents[2] / "config" / "robots" / "sim_arm.yaml"
ROBOT = yaml.safe_load(ROBOT_YAML.read_text())


@pytest.fixture(scope="module")
def env():
    sim = SimEnv(SimConfig(image_width=64, image_height=48))
    yield sim
    sim.close()


class HoldStill:
    """A policy that asks the arm to stay where it is."""

    def reset(self):
        pass

    def step(self, observation):
        return ActionChunk(observation.stamp, np.tile(observation.state, (5, 1)), 0.1), StepStats()


def test_mjcf_joints_and_ranges_match_the_robot_config(env):
    model = env.model
    assert [model.joint(i).name for i in range(model.njnt)] == ROBOT["joints"]
    assert model.jnt_range[:, 0] == pytest.approx(ROBOT["limits"]["position_lower"])
    assert model.jnt_range[:, 1] == pytest.approx(ROBOT["limits"]["position_upper"])
    assert model.jnt_limited.all()
    actuated = [model.joint(model.actuator_trnid[i, 0]).name for i in range(model.nu)]
    assert actuated == ROBOT["joints"]


def test_cameras_match_the_robot_config(env):
    assert [c["name"] for c in ROBOT["cameras"]] == list(CAMERAS)
    for name in CAMERAS:
        assert env.model.camera(name).id >= 0


def test_robot_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "arm.yaml"
    bad.write_text("name: two\njoints: [a, b]\ncommand_topics: {joint_trajectory: /t}\n"
                   "limits: {position_lower: [0, 0], position_upper: [1, 1], velocity: [1, 1]}\n")
    with pytest.raises(ConfigError, match="joints: the sim arm has 6 joints"):
        SimEnv(SimConfig(robot=str(bad)))
    with pytest.raises(ConfigError, match="image_width"):
        SimConfig(image_width=4)


def test_observation_has_both_cameras_and_the_joint_state(env):
    obs = env.reset("reach", 0)
    assert set(obs.images) == set(CAMERAS)
    for image in obs.images.values():
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        assert image.std() > 5  # a rendered scene, not a blank buffer
    assert obs.state.shape == (6,) and obs.state.dtype == np.float32
    assert obs.instruction == "touch the red cube"


@pytest.mark.parametrize("task", ["reach", "memory"])
def test_placements_are_seeded_spread_and_inside_the_workspace(env, task):
    env.reset(task, 7)
    first = env.cube_positions.copy()
    env.reset(task, 7)
    assert np.array_equal(first, env.cube_positions)
    env.reset(task, 8)
    assert not np.array_equal(first, env.cube_positions)
    targets = set()
    for seed in range(30):
        placement = get_task(task).place(seed, 3)
        targets.add(placement.target)
        xy = placement.positions
        assert np.all((xy[:, 0] >= WORKSPACE_X[0]) & (xy[:, 0] <= WORKSPACE_X[1]))
        assert np.all((xy[:, 1] >= WORKSPACE_Y[0]) & (xy[:, 1] <= WORKSPACE_Y[1]))
        gaps = [np.linalg.norm(xy[i] - xy[j]) for i in range(3) for j in range(i + 1, 3)]
        assert min(gaps) >= MIN_SPACING
    assert targets == {0, 1, 2}  # the target is not always the same cube


def test_reach_paints_only_the_target_red(env):
    env.reset("reach", 3)
    rgba = [tuple(env.model.geom_rgba[g]) for g in env.cube_geoms]
    reds = [i for i, c in enumerate(rgba) if np.allclose(c, RED)]
    assert reds == [env.placement.target]


def test_memory_target_flashes_then_looks_like_the_others(env):
    obs = env.reset("memory", 5)
    rgba = np.array([env.model.geom_rgba[g] for g in env.cube_geoms])
    others = [i for i in range(3) if i != env.placement.target]
    assert not np.allclose(rgba[env.placement.target], rgba[others[0]])
    hold = env.joint_positions
    while env.time < get_task("memory").flash_seconds + 0.05:
        later, _ = env.step(hold)
    rgba = np.array([env.model.geom_rgba[g] for g in env.cube_geoms])
    assert np.allclose(rgba, rgba[0])
    assert np.abs(obs.images["main"].astype(int) - later.images["main"]).max() > 50  # the flash is visible


def test_a_bad_reset_is_refused_and_leaves_the_episode_as_it_was(env):
    env.reset("reach", 5)
    before = (env.task, env.seed, env.placement)
    for task, seed, seconds in (("reach", -1, None), ("memory", 2, float("inf")),
                                ("memory", 2, float("nan")), ("memory", 2.5, None)):
        with pytest.raises(ConfigError, match="seed|episode_seconds"):
            env.reset(task, seed, seconds)
        assert (env.task, env.seed, env.placement) == before
    with pytest.raises(ConfigError, match="seed"):
        get_task("reach").place(-2, 3)


def test_commands_are_validated_and_bad_ones_change_nothing(env):
    with pytest.raises(ConfigError, match="unknown task 'fly'.*reach"):
        env.reset("fly", 0)
    env.reset("reach", 1)
    before = env.joint_targets
    with pytest.raises(InputError, match="non-finite"):
        env.command(np.array([0, 0, np.nan, 0, 0, 0]))
    with pytest.raises(InputError, match="shape"):
        env.command(np.zeros(5))
    assert np.array_equal(env.joint_targets, before)
    env.command(np.full(6, 10.0))  # beyond every upper limit: clipped like hardware limits
    assert env.joint_targets == pytest.approx(ROBOT["limits"]["position_upper"])


def test_position_targets_are_tracked(env):
    env.reset("reach", 2)
    goal = env.joint_positions + np.array([0.2, -0.1, 0.1, 0.3, -0.2, 0.4])
    for _ in range(10):
        env.step(goal)
    assert env.joint_positions == pytest.approx(goal, abs=0.01)


@pytest.mark.parametrize("task,seed", [("reach", 11), ("memory", 12)])
def test_expert_touches_the_target(env, task, seed):
    episode = run_episode(env, ScriptedExpert(env), task, seed, keep_observations=False)
    assert episode.outcome.success and episode.outcome.reason == "touched_target"
    assert 0 < episode.outcome.steps == len(episode.actions)
    assert episode.outcome.steps < 40


def test_touching_another_cube_fails(env):
    env.reset("reach", 4)
    wrong = next(i for i in range(3) if i != env.placement.target)
    episode = run_episode(env, ScriptedExpert(env, cube=wrong), "reach", 4, keep_observations=False)
    assert not episode.outcome.success and episode.outcome.reason == "touched_wrong_cube"


def test_an_arm_that_does_not_move_times_out(env):
    episode = run_episode(env, HoldStill(), "reach", 6, keep_observations=False)
    assert episode.outcome.reason == "timeout" and not episode.outcome.success
    assert episode.outcome.seconds == pytest.approx(get_task("reach").episode_seconds, abs=0.11)
    env.step(env.joint_positions)  # after the end the episode stays over
    assert env.outcome == episode.outcome


def test_trajectory_follower_interpolates_holds_and_refuses_bad_trajectories():
    joints = tuple(ROBOT["joints"])
    follower = TrajectoryFollower(joints, np.zeros(6))
    follower.set(["joint2", "joint1"], np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, 2.0]),
                 start=10.0, now=10.0)
    assert follower.target(10.5)[:3] == pytest.approx([1.0, 0.5, 0.0])  # from the current target
    assert follower.target(11.5)[:2] == pytest.approx([3.0, 2.0])
    assert follower.target(99.0) == pytest.approx([4.0, 3.0, 0, 0, 0, 0])  # holds the last point
    for names, positions, times in [(["joint1", "wrist"], [[1.0, 1.0]], [1.0]),
                                    (["joint1"], [[np.inf]], [1.0]),
                                    (["joint1"], [[1.0], [2.0]], [1.0, 0.5])]:
        with pytest.raises(InputError):
            follower.set(names, np.array(positions), np.array(times), start=10.0, now=12.0)
    assert follower.target(12.0)[0] == pytest.approx(4.0)  # a refused trajectory changes nothing
    follower.set(["joint1"], np.array([[7.0]]), np.array([1.0]), start=0.0, now=12.0)  # all in the past
    assert follower.target(13.0)[0] == pytest.approx(7.0)
    follower.set(["joint1"], np.zeros((0, 1)), np.zeros(0), start=12.0, now=12.0)  # empty: stop here
    assert follower.target(20.0)[0] == pytest.approx(7.0)


RENDER_ONCE = """
from dysta_ros.errors import RenderError
from dysta_ros.sim.env import SimConfig, SimEnv
with SimEnv(SimConfig(image_width=32, image_height=24)) as env:
    try:
        print(env.reset("reach", 0).images["main"].reshape(-1, 3).mean(axis=0).round().tolist())
    except RenderError as exc:
        print("RenderError:", exc)
"""


def render_once(backend: str) -> str:
    # no display; and no PYOPENGL_PLATFORM, which mujoco set in this process for its EGL backend
    environment = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "PYOPENGL_PLATFORM")}
    environment["MUJOCO_GL"] = backend
    result = subprocess.run([sys.executable, "-c", RENDER_ONCE], capture_output=True, text=True,
                            timeout=120, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_osmesa_the_software_fallback_renders_the_same_scene():
    # the colours of the same scene agree across GL implementations to a few levels
    egl, osmesa = (json.loads(render_once(backend)) for backend in ("egl", "osmesa"))
    assert max(abs(a - b) for a, b in zip(egl, osmesa)) < 8


def test_no_usable_gl_is_one_clear_error_saying_what_to_install():
    line = render_once("glfw")  # no display here: GLFW cannot make a context
    assert line.startswith("RenderError:") and "MUJOCO_GL='glfw'" in line and "libosmesa6" in line
