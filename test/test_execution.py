"""The executor's core logic on constructed chunks: no ROS, plain values, time passed in."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dysta_ros.errors import ConfigError, InputError
from dysta_ros.execution import (
    ChunkBlender, ChunkExecutor, ExecutorConfig, TimedChunk, clip_to_limits, prepare_actions,
)
from dysta_ros.robot import RobotConfig, load_robot_config
from dysta_ros.types import ActionChunk

JOINTS = [f"joint{i}" for i in range(1, 7)]


@pytest.fixture
def robot():
    return load_robot_config("sim_arm")


def ramp_chunk(stamp, horizon=10, dt=0.1, offset=0.0, slope=0.0, names=JOINTS):
    """Actions whose every joint reads `offset + slope * k` at step k."""
    values = offset + slope * np.arange(horizon, dtype=np.float32)
    actions = np.repeat(values[:, None], len(names), axis=1)
    return ActionChunk(stamp=stamp, actions=actions, dt=dt, names=list(names))


# Latency compensation --------------------------------------------------------------------


def test_actions_already_past_are_skipped_and_sampling_starts_at_now():
    blender = ChunkBlender("latest")
    actions = np.arange(10, dtype=np.float64)[:, None]  # action k = k
    skipped = blender.add(TimedChunk(start=100.0, dt=0.1, actions=actions, received=100.35), now=100.35)
    assert skipped == 4  # actions for 100.0, 100.1, 100.2, 100.3 are past
    np.testing.assert_allclose(blender.target(100.35), [3.5])  # between action 3 and 4
    np.testing.assert_allclose(blender.target(100.9), [9.0])
    assert blender.target(101.0) is None  # beyond the plan


def test_chunk_entirely_in_the_past_is_refused():
    blender = ChunkBlender("latest")
    with pytest.raises(InputError, match="after its last action"):
        blender.add(TimedChunk(0.0, 0.1, np.zeros((5, 2)), received=10.0), now=10.0)


def test_executor_compensates_latency_by_observation_stamp(robot):
    config = ExecutorConfig(control_rate_hz=10.0, blending="latest")
    executor = ChunkExecutor(config, robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=50.2)
    # Observation at t=50.0, inference took 0.2 s: the command aims at 50.2 + one period.
    executor.on_chunk(ramp_chunk(50.0, slope=0.01), now=50.2)
    tick = executor.tick(now=50.2)
    np.testing.assert_allclose(tick.command, np.full(6, 0.03), atol=1e-9)
    assert executor.counts["late_actions_skipped"] == 2


def test_without_latency_compensation_action_zero_is_for_arrival(robot):
    config = ExecutorConfig(control_rate_hz=10.0, blending="latest", latency_compensation=False)
    executor = ChunkExecutor(config, robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=50.2)
    executor.on_chunk(ramp_chunk(50.0, slope=0.01), now=50.2)
    np.testing.assert_allclose(executor.tick(now=50.2).command, np.full(6, 0.01), atol=1e-9)


# Blending -------------------------------------------------------------------------------


def two_overlapping(blending):
    blender = ChunkBlender(blending, ensemble_decay=0.5)
    blender.add(TimedChunk(0.0, 0.1, np.zeros((11, 1)), received=0.0), now=0.0)  # covers 0..1
    blender.add(TimedChunk(0.5, 0.1, np.ones((11, 1)), received=0.5), now=0.5)  # covers .5..1.5
    return blender


def test_latest_switches_to_the_new_chunk_at_once():
    blender = two_overlapping("latest")
    assert blender.target(0.5)[0] == pytest.approx(1.0)
    assert blender.target(0.9)[0] == pytest.approx(1.0)


def test_weighted_average_cross_fades_over_the_overlap():
    blender = two_overlapping("weighted_average")
    assert blender.target(0.5)[0] == pytest.approx(0.0)  # starts on the previous plan: no jump
    assert blender.target(0.75)[0] == pytest.approx(0.5)
    assert blender.target(1.0)[0] == pytest.approx(1.0)
    assert blender.target(1.2)[0] == pytest.approx(1.0)  # only the new chunk covers it
    values = [blender.target(t)[0] for t in np.linspace(0.5, 1.0, 11)]
    assert np.all(np.diff(values) >= 0)


def test_temporal_ensemble_weighs_older_chunks_more():
    blender = two_overlapping("temporal_ensemble")
    w_old, w_new = 1.0, np.exp(-0.5)
    assert blender.target(0.7)[0] == pytest.approx(w_new / (w_old + w_new))
    assert blender.target(1.2)[0] == pytest.approx(1.0)


def test_unknown_blending_names_the_valid_ones():
    with pytest.raises(ConfigError, match="latest, weighted_average, temporal_ensemble"):
        ExecutorConfig(blending="average")


# Validation -----------------------------------------------------------------------------


def test_chunk_joints_are_matched_by_name_not_index(robot):
    chunk = ramp_chunk(0.0, horizon=2, names=list(reversed(JOINTS)))
    chunk.actions = np.tile(np.arange(6, dtype=np.float32), (2, 1))  # joint6=0 ... joint1=5
    actions = prepare_actions(chunk, robot.joints, "joint_position")
    np.testing.assert_array_equal(actions[0], [5, 4, 3, 2, 1, 0])


@pytest.mark.parametrize("mutate, message", [
    (lambda c: setattr(c, "actions", np.full((3, 6), np.nan, np.float32)), "non-finite"),
    (lambda c: setattr(c, "actions", np.zeros((3, 5), np.float32)), "distinct joint names"),
    (lambda c: setattr(c, "names", JOINTS[:5] + ["elbow"]), "differ from the robot"),
    (lambda c: setattr(c, "dt", 0.0), "dt must be"),
    (lambda c: setattr(c, "action_space", "ee_twist"), "does not fit"),
    (lambda c: setattr(c, "actions", np.zeros((0, 6), np.float32)), "horizon >= 1"),
])
def test_bad_chunks_are_rejected_and_counted(robot, mutate, message):
    executor = ChunkExecutor(ExecutorConfig(), robot)
    chunk = ramp_chunk(10.0, horizon=3)
    mutate(chunk)
    with pytest.raises(InputError, match=message):
        executor.on_chunk(chunk, now=10.0)
    assert executor.counts["rejected"] == 1
    assert message.split()[0] in executor.last_rejection
    assert executor.tick(now=10.0).command is None  # nothing to follow


# Limits ---------------------------------------------------------------------------------


def test_targets_clip_to_position_and_velocity_limits(robot):
    config = ExecutorConfig(control_rate_hz=10.0, blending="latest", max_chunk_age_s=10.0)
    executor = ChunkExecutor(config, robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.0)
    executor.on_chunk(ramp_chunk(0.0, horizon=50, offset=100.0), now=0.0)
    tick = executor.tick(now=0.0)
    assert tick.clipped
    np.testing.assert_allclose(tick.command, robot.max_velocity * 0.1)  # one period of max velocity
    for k in range(1, 40):
        tick = executor.tick(now=0.1 * k)
    np.testing.assert_allclose(tick.command, robot.upper)  # then the position limit


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=6, max_size=6),
       st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6))
def test_clipped_commands_always_respect_limits(target, reference):
    robot = load_robot_config("sim_arm")
    reference = np.clip(np.array(reference), robot.lower, robot.upper)
    command, _ = clip_to_limits(np.array(target), reference, 0.02, robot)
    assert np.all(command >= robot.lower) and np.all(command <= robot.upper)
    assert np.all(np.abs(command - reference) <= robot.max_velocity * 0.02 + 1e-9)


# E-stop and deadman ---------------------------------------------------------------------


def test_estop_latches_until_explicitly_cleared(robot):
    executor = ChunkExecutor(ExecutorConfig(control_rate_hz=10.0), robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.0)
    executor.on_chunk(ramp_chunk(0.0), now=0.0)
    assert executor.tick(now=0.0).command is not None
    executor.trip_estop("operator")
    executor.on_chunk(ramp_chunk(0.1), now=0.1)  # chunks keep coming: still held
    tick = executor.tick(now=0.1)
    assert tick.command is None and "e-stop" in tick.hold_reason
    assert executor.clear_estop()
    # Released, but only a chunk that arrives after the clear moves the robot.
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.2)
    assert executor.tick(now=0.2).command is None
    executor.on_chunk(ramp_chunk(0.2), now=0.2)
    assert executor.tick(now=0.2).command is not None


def test_deadman_holds_when_chunks_stop(robot):
    executor = ChunkExecutor(ExecutorConfig(control_rate_hz=10.0, max_chunk_age_s=0.3), robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.0)
    assert executor.tick(now=0.0).hold_reason == "waiting for a chunk"
    executor.on_chunk(ramp_chunk(0.0, horizon=30), now=0.0)  # a plan for 3 s
    assert executor.tick(now=0.2).command is not None
    tick = executor.tick(now=0.5)  # plan left, but no fresh chunk for 0.5 s
    assert tick.command is None and tick.hold_reason.startswith("deadman")


def test_first_command_needs_fresh_joint_states(robot):
    executor = ChunkExecutor(ExecutorConfig(control_rate_hz=10.0, max_state_age_s=0.2), robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.0)
    executor.on_chunk(ramp_chunk(1.0), now=1.0)
    assert "joint states" in executor.tick(now=1.0).hold_reason


# Robot config ---------------------------------------------------------------------------


def test_robot_config_errors_name_the_field():
    good = dict(name="arm", joints=["a", "b"],
                limits=dict(position_lower=[-1, -1], position_upper=[1, 1], velocity=[1, 1]),
                command_topics={"joint_trajectory": "/jtc"})
    assert RobotConfig.from_dict(good).joints == ("a", "b")
    with pytest.raises(ConfigError, match="limits.velocity"):
        RobotConfig.from_dict({**good, "limits": {**good["limits"], "velocity": [1]}})
    with pytest.raises(ConfigError, match="joint_position, ee_pose, ee_twist"):
        RobotConfig.from_dict({**good, "action_space": "torque"})
    with pytest.raises(ConfigError, match="unknown keys"):
        RobotConfig.from_dict({**good, "joint": ["a"]})
    with pytest.raises(ConfigError, match="sim_arm"):
        load_robot_config("no_such_robot")


def test_joint_states_are_picked_by_name(robot):
    names = ["gripper"] + list(reversed(JOINTS))
    picked = robot.pick_joints(names, [9.0, 6, 5, 4, 3, 2, 1])
    np.testing.assert_array_equal(picked, [1, 2, 3, 4, 5, 6])
    with pytest.raises(InputError, match="lacks joints"):
        robot.pick_joints(JOINTS[:5], [0.0] * 5)
    with pytest.raises(InputError, match="non-finite"):
        robot.pick_joints(JOINTS, [0.0] * 5 + [float("nan")])
    with pytest.raises(InputError, match="duplicated"):
        robot.pick_joints(JOINTS + ["joint1"], [0.0] * 7)


def test_end_effector_outputs_take_their_action_space_unclipped():
    robot = RobotConfig.from_dict(dict(
        name="servo_arm", joints=["a", "b"], action_space="ee_twist", command_output="ee_twist",
        limits=dict(position_lower=[-1, -1], position_upper=[1, 1], velocity=[1, 1]),
        command_topics={"ee_twist": "/servo_node/delta_twist_cmds"}))
    executor = ChunkExecutor(ExecutorConfig(control_rate_hz=10.0, blending="latest"), robot)
    twist = ActionChunk(stamp=5.0, actions=np.tile([[0.1, 0, 0, 0, 0, 2.0]], (10, 1)).astype(np.float32),
                        dt=0.1, action_space="ee_twist", names=["vx", "vy", "vz", "wx", "wy", "wz"])
    executor.on_chunk(twist, now=5.0)
    np.testing.assert_allclose(executor.tick(now=5.0).command, [0.1, 0, 0, 0, 0, 2.0], rtol=1e-6)
    with pytest.raises(InputError, match="dim in"):
        executor.on_chunk(ActionChunk(stamp=5.0, actions=np.zeros((3, 4), np.float32), dt=0.1,
                                      action_space="ee_twist"), now=5.0)
