"""The executor's core logic on constructed chunks: no ROS, plain values, time passed in."""

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from dysta_ros.errors import ConfigError, InputError
from dysta_ros.execution import (
    ChunkBlender, ChunkExecutor, ExecutorConfig, StaleChunkError, TimedChunk, clip_to_limits,
    clip_to_workspace, describe_excess, limit_path, prepare_actions, weighted_mean,
)
from dysta_ros.robot import RobotConfig, Workspace, load_robot_config
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


def test_weighted_average_does_not_jump_when_chunks_come_faster_than_they_fade():
    # A policy at 10 Hz with 1 s chunks: each new chunk arrives while the one before is still
    # fading in. It must fade from that blend, not from the chunk before alone (a jump of
    # nearly the whole difference between the last two chunks, each time one arrived).
    blender = ChunkBlender("weighted_average")
    targets = []
    for i in range(20):
        now = 0.1 * i
        before = None if i == 0 else blender.target(now)
        chunk = TimedChunk(now - 0.05, 0.02, np.full((50, 1), float(i % 2)), received=now)  # 0, 1, 0, ...
        blender.add(chunk, now=now)
        if before is not None:
            assert blender.target(now)[0] == pytest.approx(before[0])  # arriving moves nothing
        targets += [blender.target(t)[0] for t in now + 0.02 * np.arange(5)]
    # 0 and 1 alternate at 10 Hz: the plan moves smoothly between them (a tick's step is that
    # of a 1 s fade), where the old blend stepped by ~0.9 at each arrival.
    assert np.max(np.abs(np.diff(targets))) < 0.05


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


def test_the_trajectory_lookahead_is_the_blended_plan_ahead_within_the_limits(robot):
    config = ExecutorConfig(control_rate_hz=20.0, blending="latest", trajectory_lookahead_s=0.3)
    executor = ChunkExecutor(config, robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.0)
    executor.on_chunk(ramp_chunk(0.0, horizon=20, slope=0.01), now=0.0)  # joint k*0.01 at 0.1 k s
    tick = executor.tick(now=0.0)
    points = executor.lookahead(0.0, tick.command)  # (6, 6): 0.3 s at 20 Hz
    assert points.shape == (6, 6)
    np.testing.assert_allclose(points[0], tick.command)
    # point j is the plan at (j + 1) periods from now: a ramp of 0.01 per 0.1 s
    np.testing.assert_allclose(points[:, 0], 0.01 * (np.arange(1, 7) * 0.05) / 0.1, atol=1e-9)
    # A plan out of reach: every point one period of velocity from the one before, within limits.
    far = ExecutorConfig(control_rate_hz=20.0, blending="latest", trajectory_lookahead_s=1.0)
    executor = ChunkExecutor(far, robot)
    executor.on_joint_state(JOINTS, list(robot.lower + 0.01), now=0.0)
    executor.on_chunk(ramp_chunk(0.0, horizon=50, offset=100.0), now=0.0)
    tick = executor.tick(now=0.0)
    points = executor.lookahead(0.0, tick.command)
    steps = np.diff(np.vstack([robot.lower + 0.01, points]), axis=0)
    assert len(points) == 20 and np.all(np.abs(steps) <= robot.max_velocity * 0.05 + 1e-9)
    assert np.all(points >= robot.lower) and np.all(points <= robot.upper)
    np.testing.assert_allclose(steps[1:], np.tile(robot.max_velocity * 0.05, (19, 1)))  # it does move
    # The plan runs out: the trajectory stops where the plan does (0.4 s left -> 8 points).
    executor.on_chunk(ramp_chunk(4.5, horizon=10), now=4.5)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=5.0)
    tick = executor.tick(now=5.0)
    assert len(executor.lookahead(5.0, tick.command)) == 8


def test_a_zero_lookahead_sends_the_one_command():
    robot = load_robot_config("sim_arm")
    executor = ChunkExecutor(ExecutorConfig(control_rate_hz=20.0, trajectory_lookahead_s=0.0), robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.0)
    executor.on_chunk(ramp_chunk(0.0, horizon=20, slope=0.01), now=0.0)
    tick = executor.tick(now=0.0)
    np.testing.assert_allclose(executor.lookahead(0.0, tick.command), tick.command[None, :])


@pytest.mark.parametrize("blending", ["latest", "weighted_average", "temporal_ensemble"])
def test_a_trajectory_starts_within_one_period_of_velocity_of_the_one_followed(robot, blending):
    # The node sends a trajectory every 5th tick; in between, the controller follows the last one.
    # A chunk that turns the plan round between two sendings must not let the next trajectory
    # start where the unsent commands went (5 periods the other way): the controller would
    # cover that gap in one period.
    config = ExecutorConfig(control_rate_hz=50.0, blending=blending, max_chunk_age_s=5.0)
    executor = ChunkExecutor(config, robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.0)
    executor.on_chunk(ramp_chunk(0.0, horizon=50, slope=-0.5), now=0.0)  # down, beyond reach
    arrivals = {7: ramp_chunk(0.14, horizon=50, offset=3.0), 12: ramp_chunk(0.24, horizon=50, offset=-3.0)}
    step = robot.max_velocity * config.period + 1e-9
    sent, sent_at, sendings = None, 0, 0
    for k in range(40):
        now = k * config.period
        if k in arrivals:
            executor.on_chunk(arrivals[k], now=now)
        tick = executor.tick(now)
        if k % 5:
            continue
        points = executor.lookahead(now, tick.command)
        if sent is not None:  # the controller is at the last trajectory's point for now
            following = sent[min(k - sent_at, len(sent)) - 1]
            assert np.all(np.abs(points[0] - following) <= step), (k, points[0], following)
        assert np.all(np.abs(np.diff(points, axis=0)) <= step)
        sent, sent_at, sendings = points, k, sendings + 1
    assert sendings == 8


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


def test_a_chunk_older_than_the_deadman_is_dropped_counted_and_does_not_feed_it(robot):
    executor = ChunkExecutor(ExecutorConfig(control_rate_hz=10.0, max_chunk_age_s=0.3), robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=10.0)
    executor.on_chunk(ramp_chunk(9.9, horizon=50), now=10.0)  # 0.1 s old: taken
    # a slow link delivers chunks whose observation is 0.4 s old: each is dropped, none feeds
    # the deadman, so the robot holds once the last fresh chunk is 0.3 s old
    for now in (10.1, 10.2, 10.3, 10.4):
        with pytest.raises(StaleChunkError, match="0.400 s old on arrival"):
            executor.on_chunk(ramp_chunk(now - 0.4, horizon=50), now=now)
    assert executor.counts["stale"] == 4 and executor.counts["rejected"] == 0
    assert executor.counts["accepted"] == 1
    assert executor.tick(now=10.4).hold_reason.startswith("deadman")
    executor.on_joint_state(JOINTS, [0.0] * 6, now=10.5)
    executor.on_chunk(ramp_chunk(10.45, horizon=50), now=10.5)  # a fresh one: motion resumes
    assert executor.tick(now=10.5).command is not None


@pytest.mark.parametrize("output", ["forward_position", "joint_trajectory"])
def test_leaving_a_dry_run_starts_from_the_measured_state_not_from_the_unsent_commands(robot, output):
    # dry_run is a live parameter: watch the commands, then turn it off. The ones logged were
    # never sent, so the arm is still where it was; the first real command is one period of
    # velocity from there, not from where the dry run's commands had gone.
    config = ExecutorConfig(control_rate_hz=10.0, blending="latest", max_chunk_age_s=5.0,
                            command_output=output, dry_run=True)
    executor = ChunkExecutor(config, robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.0)
    executor.on_chunk(ramp_chunk(0.0, horizon=50, offset=1.0), now=0.0)
    for k in range(5):
        assert executor.tick(now=0.1 * k).command is not None  # logged, not sent
    executor.reconfigure(dataclasses.replace(config, dry_run=False))
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.5)
    command = executor.tick(now=0.5).command
    np.testing.assert_allclose(command, robot.max_velocity * 0.1)


def test_first_command_needs_fresh_joint_states(robot):
    executor = ChunkExecutor(ExecutorConfig(control_rate_hz=10.0, max_state_age_s=0.2), robot)
    executor.on_joint_state(JOINTS, [0.0] * 6, now=0.0)
    executor.on_chunk(ramp_chunk(1.0), now=1.0)
    assert "joint states" in executor.tick(now=1.0).hold_reason


def test_a_joint_state_from_before_the_clock_jumped_back_cannot_start_motion(robot):
    # Sim time reset: the last joint state was taken at 100 s on the old timeline, and none
    # came since (the driver stopped). Its age on the new one is negative, not fresh.
    executor = ChunkExecutor(ExecutorConfig(control_rate_hz=10.0, max_state_age_s=0.2), robot)
    executor.on_joint_state(JOINTS, [0.5] * 6, now=100.0)
    assert executor.tick(now=100.0).command is None  # no chunk yet
    assert "clock jumped back" in executor.tick(now=1.0).hold_reason
    executor.on_chunk(ramp_chunk(1.05), now=1.1)
    assert "joint states" in executor.tick(now=1.1).hold_reason
    executor.on_joint_state(JOINTS, [0.0] * 6, now=1.15)  # one on the new time starts it
    np.testing.assert_allclose(executor.tick(now=1.2).command, np.zeros(6), atol=1e-9)


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
    assert not executor.bounded  # no workspace in this config: the node says so on /diagnostics
    np.testing.assert_allclose(executor.tick(now=5.0).command, [0.1, 0, 0, 0, 0, 2.0], rtol=1e-6)
    with pytest.raises(InputError, match="dim in"):
        executor.on_chunk(ActionChunk(stamp=5.0, actions=np.zeros((3, 4), np.float32), dt=0.1,
                                      action_space="ee_twist"), now=5.0)


# Workspace ------------------------------------------------------------------------------

WORKSPACE = dict(min_xyz=[-0.3, -0.6, 0.01], max_xyz=[0.9, 0.6, 0.8], max_linear_speed=0.25,
                 max_angular_speed=1.0)
POSE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw"]


def ee_robot(output, workspace=WORKSPACE):
    return RobotConfig.from_dict(dict(
        name="servo_arm", joints=["a", "b"], action_space=output, command_output=output,
        limits=dict(position_lower=[-1, -1], position_upper=[1, 1], velocity=[1, 1]),
        command_topics={output: f"/servo_node/{output}"}, workspace=workspace))


def ee_chunk(rows, stamp=5.0, space="ee_pose", horizon=10):
    actions = np.tile(np.asarray([rows], dtype=np.float32), (horizon, 1))
    return ActionChunk(stamp=stamp, actions=actions, dt=0.1, action_space=space, names=POSE_NAMES)


def ee_executor(output, workspace=WORKSPACE):
    return ChunkExecutor(ExecutorConfig(control_rate_hz=10.0, blending="latest"), ee_robot(output, workspace))


def test_shipped_robot_config_has_a_valid_workspace(robot):
    assert robot.workspace is not None
    assert np.all(robot.workspace.lower < robot.workspace.upper)


@pytest.mark.parametrize("change, field", [
    ({"min_xyz": [0.0, 0.0]}, "workspace.min_xyz: needs 3 values"),
    ({"max_xyz": [0.9, float("nan"), 0.8]}, "workspace.max_xyz: values must be finite"),
    ({"min_xyz": [1.0, -0.6, 0.01]}, "workspace.min_xyz: must be below max_xyz"),
    ({"max_linear_speed": 0.0}, "workspace.max_linear_speed: must be a positive"),
    ({"max_angular_speed": float("inf")}, "workspace.max_angular_speed: must be a positive"),
    ({"max_angular_speed": None}, "workspace needs exactly the keys"),
    ({"min_xyz": 3.0}, "workspace: .*lists of 3 numbers"),
    ({"max_xyz": "far"}, "workspace: .*lists of 3 numbers"),
    ({"box": [1, 2, 3]}, "workspace needs exactly the keys min_xyz, max_xyz, max_linear_speed"),
])
def test_workspace_errors_name_the_field(change, field):
    workspace = {k: v for k, v in {**WORKSPACE, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=field):
        ee_robot("ee_pose", workspace)


def test_workspace_errors_name_the_file(tmp_path):
    path = tmp_path / "arm.yaml"
    path.write_text("name: arm\njoints: [a]\nlimits: {position_lower: [-1], position_upper: [1], "
                    "velocity: [1]}\ncommand_topics: {joint_trajectory: /jtc}\nworkspace: [0, 1]\n")
    with pytest.raises(ConfigError, match=f"{path}: workspace needs exactly the keys"):
        load_robot_config(str(path))


def test_pose_positions_clamp_into_the_box_and_say_how_far_out():
    workspace = Workspace(**WORKSPACE)
    inside = np.array([0.3, 0.1, 0.2, 0.1, 0.2, 0.3])
    command, excess = clip_to_workspace(inside, "ee_pose", workspace)
    np.testing.assert_array_equal(command, inside)
    assert excess == {}
    target = np.array([1.2, 0.0, -0.39, 0.1, 0.2, 0.3, 0.9])  # 0.3 m beyond x, 0.4 m below z
    command, excess = clip_to_workspace(target, "ee_pose", workspace)
    np.testing.assert_allclose(command, [0.9, 0.0, 0.01, 0.1, 0.2, 0.3, 0.9])  # orientation kept
    assert excess["position_m"] == pytest.approx(0.5)
    assert describe_excess(excess) == "position 0.500 m outside the box"


def test_twists_scale_down_to_the_speed_limits_keeping_their_direction():
    workspace = Workspace(**WORKSPACE)
    command, excess = clip_to_workspace(np.array([0.6, 0.8, 0.0, 0.0, 0.0, -3.0]), "ee_twist", workspace)
    np.testing.assert_allclose(command, [0.15, 0.2, 0.0, 0.0, 0.0, -1.0])
    assert excess == pytest.approx({"linear_speed_m_s": 0.75, "angular_speed_rad_s": 2.0})
    assert describe_excess(excess) == ("linear speed 0.750 m/s over the limit, "
                                       "angular speed 2.000 rad/s over the limit")
    slow = np.array([0.1, 0.0, 0.1, 0.5, 0.0, 0.0])
    command, excess = clip_to_workspace(slow, "ee_twist", workspace)
    np.testing.assert_array_equal(command, slow)
    assert excess == {}


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=7, max_size=7), st.sampled_from(["ee_pose", "ee_twist"]))
def test_clamped_end_effector_commands_always_respect_the_workspace(values, space):
    workspace = Workspace(**WORKSPACE)
    target = np.array(values[:7] if space == "ee_pose" else values[:6])
    command, excess = clip_to_workspace(target, space, workspace)
    assert np.all(np.isfinite(command))
    if space == "ee_pose":
        assert np.all(command[:3] >= workspace.lower) and np.all(command[:3] <= workspace.upper)
        np.testing.assert_array_equal(command[3:], target[3:])
    else:
        assert np.linalg.norm(command[:3]) <= workspace.max_linear_speed * (1 + 1e-9)
        assert np.linalg.norm(command[3:]) <= workspace.max_angular_speed * (1 + 1e-9)
    # Clamping is idempotent, and what it reports is exactly what it changed.
    again, none = clip_to_workspace(command, space, workspace)
    np.testing.assert_allclose(again, command, rtol=1e-12, atol=1e-12)
    assert none == {} or max(none.values()) < 1e-9
    assert bool(excess) == bool(np.any(command != target))


def test_executor_keeps_pose_commands_in_the_box_and_counts_each_clamp():
    executor = ee_executor("ee_pose")
    assert executor.bounded
    executor.on_chunk(ee_chunk([0.3, 0.0, 0.2, 0.0, 0.0, 0.0]), now=5.0)
    tick = executor.tick(now=5.0)
    assert not tick.clipped and tick.excess == {}
    executor.on_chunk(ee_chunk([0.3, 1.6, 0.2, 0.0, 0.0, 0.0], stamp=5.1), now=5.1)  # 1 m beyond y
    for k in range(3):
        tick = executor.tick(now=5.1 + 0.1 * k)
        assert tick.clipped and tick.excess["position_m"] == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(tick.command[:3], [0.3, 0.6, 0.2], atol=1e-6)
    assert executor.counts["clipped"] == 3 and executor.counts["commands"] == 4
    assert executor.worst_excess["position_m"] == pytest.approx(1.0, abs=1e-6)


def test_executor_keeps_twists_under_the_speed_limits():
    executor = ee_executor("ee_twist")
    executor.on_chunk(ee_chunk([2.0, 0.0, 0.0, 0.0, 0.0, 0.5], space="ee_twist"), now=5.0)
    tick = executor.tick(now=5.0)
    np.testing.assert_allclose(tick.command, [0.25, 0.0, 0.0, 0.0, 0.0, 0.5], atol=1e-6)
    assert tick.excess == pytest.approx({"linear_speed_m_s": 1.75})
    assert executor.counts["clipped"] == 1


@pytest.mark.parametrize("output", ["ee_pose", "ee_twist"])
def test_non_finite_end_effector_actions_hold(output):
    executor = ee_executor(output)
    with pytest.raises(InputError, match="non-finite"):
        executor.on_chunk(ee_chunk([0.3, float("nan"), 0.2, 0.0, 0.0, 0.0], space=output), now=5.0)
    tick = executor.tick(now=5.0)
    assert tick.command is None and executor.counts["commands"] == 0
    # Behind the arrival check: a plan that yields a non-finite target still sends nothing.
    bad = np.full((10, 6), np.inf)
    executor.blender.add(TimedChunk(5.0, 0.1, bad, received=5.0), now=5.0)
    executor.deadman.feed(5.0)
    tick = executor.tick(now=5.1)
    assert tick.command is None and "non-finite" in tick.hold_reason


def test_a_zero_quaternion_is_refused():
    executor = ee_executor("ee_pose")
    with pytest.raises(InputError, match="zero quaternion"):
        executor.on_chunk(ee_chunk([0.3, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0]), now=5.0)
    executor.on_chunk(ee_chunk([0.3, 0.0, 0.2, 0.0, 0.0, 0.0, 1.0]), now=5.0)
    assert executor.tick(now=5.0).command is not None


# Orientations in blends: q and -q are one rotation ---------------------------------------

Q = np.array([0.2, -0.4, 0.1, 0.888819], dtype=np.float64) / np.linalg.norm([0.2, -0.4, 0.1, 0.888819])


def pose_chunk(start, quaternion, horizon=11, received=None):
    actions = np.tile(np.concatenate([[0.3, 0.0, 0.2], quaternion]), (horizon, 1))  # (H, 7)
    return TimedChunk(start, 0.1, actions, received=start if received is None else received)


def same_rotation(a, b):
    return abs(float(np.dot(a, b))) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("blending", ["weighted_average", "temporal_ensemble"])
def test_blending_a_quaternion_with_its_negative_keeps_the_rotation(blending):
    blender = ChunkBlender(blending, ensemble_decay=0.01, action_space="ee_pose")
    blender.add(pose_chunk(0.0, Q), now=0.0)  # covers 0..1
    blender.add(pose_chunk(0.5, -Q), now=0.5)  # the same rotation, written as -q
    for t in (0.6, 0.75, 0.9):  # both chunks cover these: a plain average would cancel to ~0
        target = blender.target(t)
        assert np.linalg.norm(target[3:]) == pytest.approx(1.0, abs=1e-9)
        assert same_rotation(target[3:], Q)
        np.testing.assert_allclose(target[:3], [0.3, 0.0, 0.2])


def test_interpolating_within_a_chunk_across_a_sign_flip_keeps_the_rotation():
    actions = np.array([np.concatenate([[0.0, 0.0, 0.0], Q * (-1) ** k]) for k in range(4)])  # (4, 7)
    chunk = TimedChunk(0.0, 0.1, actions, received=0.0)
    sample = chunk.sample(0.05, "ee_pose")  # half-way between q and -q
    assert np.linalg.norm(sample[3:]) == pytest.approx(1.0) and same_rotation(sample[3:], Q)
    assert np.linalg.norm(chunk.sample(0.05)[3:]) < 1e-9  # as plain numbers they cancel: the bug


def test_blending_yaw_across_pi_stays_near_pi():
    blender = ChunkBlender("weighted_average", action_space="ee_pose")

    def rpy_chunk(start, yaw):
        return TimedChunk(start, 0.1, np.tile([0.3, 0.0, 0.2, 0.0, 0.0, yaw], (11, 1)), received=start)

    blender.add(rpy_chunk(0.0, 3.1), now=0.0)
    blender.add(rpy_chunk(0.5, -3.1), now=0.5)
    yaw = blender.target(0.75)[5]  # half-way: pi (or -pi, the same), never 0 (half a turn away)
    assert abs(yaw) == pytest.approx(np.pi, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4), min_size=2, max_size=5),
       st.lists(st.booleans(), min_size=5, max_size=5), st.floats(0.0, 2.0))
@example([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.6, 0.8]], [False, True, False, False, False], 0.0)
def test_a_blend_does_not_depend_on_the_quaternions_signs(quaternions, flips, decay):
    quaternions = [np.array(q) for q in quaternions if np.linalg.norm(q) > 0.1]
    if not quaternions:
        return
    poses = np.array([np.concatenate([[0.0, 0.0, 0.0], q]) for q in quaternions])  # (N, 7)
    flipped = poses.copy()
    for i, flip in enumerate(flips[:len(poses)]):
        flipped[i, 3:] *= -1.0 if flip else 1.0
    weights = np.exp(-decay * np.arange(len(poses)))
    # A quaternion orthogonal to the reference is the rotation half a turn away: between the two
    # there is no one midpoint (either way round is as near), so no sign can be called right.
    unit = poses[:, 3:] / np.linalg.norm(poses[:, 3:], axis=1, keepdims=True)
    assume(np.all(np.abs(unit @ unit[int(np.argmax(weights))]) > 1e-3))
    a, b = weighted_mean(poses, weights, "ee_pose"), weighted_mean(flipped, weights, "ee_pose")
    assert np.linalg.norm(a[3:]) == pytest.approx(1.0) and same_rotation(a[3:], b[3:])


def test_executor_sends_a_unit_quaternion_when_chunks_disagree_in_sign():
    executor = ee_executor("ee_pose")
    executor.blender.blending = "temporal_ensemble"
    executor.on_chunk(ee_chunk([0.3, 0.0, 0.2, *Q]), now=5.0)
    executor.on_chunk(ee_chunk([0.3, 0.0, 0.2, *(-Q)], stamp=5.0), now=5.0)
    command = executor.tick(now=5.0).command
    assert np.linalg.norm(command[3:]) == pytest.approx(1.0) and same_rotation(command[3:], Q)


# A path of joint targets (a chunk's, the lookahead's): the executor's limits on every point -----


def limit_trajectory(chunk, start, robot):
    """A chunk's actions, validated and in the robot's joint order, held to the limits from `start`."""
    return limit_path(prepare_actions(chunk, robot.joints, "joint_position"), start, chunk.dt, robot)


def test_trajectory_points_keep_to_the_limits_from_the_measured_state(robot):
    start = robot.lower + 0.1  # the arm near its lower limits; the chunk asks for far away
    chunk = ramp_chunk(0.0, horizon=50, dt=0.1, offset=100.0, names=list(reversed(JOINTS)))
    points, clamped = limit_trajectory(chunk, start, robot)
    assert points.shape == (50, 6) and clamped == 50
    steps = np.diff(np.vstack([start, points]), axis=0)  # (50, 6): from the state, then point to point
    assert np.all(np.abs(steps) <= robot.max_velocity * 0.1 + 1e-9)
    assert np.all(points >= robot.lower) and np.all(points <= robot.upper)
    np.testing.assert_allclose(points[-1], robot.upper)  # it gets there, at the velocity limit
    # A chunk inside the limits goes out as it came.
    gentle = ramp_chunk(0.0, horizon=5, dt=0.1, offset=0.0, slope=0.05)
    points, clamped = limit_trajectory(gentle, np.zeros(6), robot)
    assert clamped == 0
    np.testing.assert_allclose(points, gentle.actions)


def test_a_non_finite_trajectory_is_refused(robot):
    chunk = ramp_chunk(0.0, horizon=5)
    chunk.actions[2, 3] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        limit_trajectory(chunk, np.zeros(6), robot)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6), min_size=6, max_size=6), min_size=1, max_size=12),
       st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6), st.floats(0.001, 1.0))
def test_any_finite_trajectory_keeps_to_the_limits(rows, start, dt):
    robot = load_robot_config("sim_arm")
    start = np.clip(np.array(start), robot.lower, robot.upper)
    chunk = ActionChunk(stamp=0.0, actions=np.array(rows), dt=dt, names=list(JOINTS))
    points, clamped = limit_trajectory(chunk, start, robot)
    steps = np.diff(np.vstack([start, points]), axis=0)
    assert np.all(np.abs(steps) <= robot.max_velocity * dt + 1e-9)
    assert np.all(points >= robot.lower) and np.all(points <= robot.upper)
    assert clamped == int(np.sum(np.any(np.abs(points - np.array(rows)) > 1e-12, axis=1)))
