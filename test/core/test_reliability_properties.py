"""Property tests of the validators the nodes rely on: joint states, latest-value inputs, the executor.

Complements the per-message properties (test_image_conversion, test_nodes_executor,
test_execution): here whole sequences of arbitrary inputs, clock jumps included.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dysta_ros.errors import InputError
from dysta_ros.execution import ChunkExecutor, ExecutorConfig
from dysta_ros.nodes.inputs import LatestInputs
from dysta_ros.robot import load_robot_config
from dysta_ros.types import ActionChunk

ROBOT = load_robot_config("sim_arm")
JOINTS = list(ROBOT.joints)
values = st.one_of(st.floats(-10, 10), st.sampled_from([math.nan, math.inf, -math.inf, 1e300]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(JOINTS + ["gripper", "", "joint1 "]), max_size=9), st.data())
def test_any_joint_state_is_picked_by_name_or_refused_with_input_error(names, data):
    positions = data.draw(st.lists(values, min_size=max(0, len(names) - 1), max_size=len(names) + 1))
    try:
        picked = ROBOT.pick_joints(names, positions)
    except InputError as exc:
        assert str(exc)
        return
    assert len(names) == len(positions) and len(set(names)) == len(names)
    expected = [positions[names.index(j)] for j in JOINTS]
    np.testing.assert_array_equal(picked, expected)
    assert np.all(np.isfinite(picked))


# (stamp offset from the clock, clock step) per arrival: stamps in the past, the future, and
# clock steps forward and (sometimes) back.
arrivals = st.lists(st.tuples(st.floats(-3.0, 3.0), st.sampled_from([0.01, 0.05, 0.3, -2.0, -40.0, 40.0])),
                    max_size=25)


@settings(max_examples=200, deadline=None)
@given(arrivals)
def test_a_frame_stamped_now_is_always_taken_whatever_came_before(history):
    inputs = LatestInputs(["/cam"], "/joint_states")
    now = 100.0
    for offset, step in history:
        now += step
        inputs.put_frame("/cam", "old", now + offset, received=now)
        inputs.put_state("old", now + offset, received=now)
        inputs.take(now, 0.5, 0.5)
    now += 0.01
    inputs.put_frame("/cam", "good", now, received=now)
    inputs.put_state("good", now, received=now)
    snapshot = inputs.take(now, 0.5, 0.5)
    assert not snapshot.stale and snapshot.new_frames
    assert snapshot.frames["/cam"].msg == "good" and snapshot.state.msg == "good"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.4, 0.0), st.floats(0.0, 0.2)), max_size=30))
def test_on_one_timeline_the_frames_stepped_on_never_go_back_in_time(history):
    inputs = LatestInputs(["/cam"], "/joint_states")
    now, used = 100.0, []
    for offset, step in history:
        now += step
        inputs.put_frame("/cam", now + offset, now + offset, received=now)
        inputs.put_state("state", now, received=now)
        snapshot = inputs.take(now, 0.5, 0.5)
        if not snapshot.stale and snapshot.new_frames:
            used.append(snapshot.frames["/cam"].stamp)
    assert used == sorted(used)


events = st.lists(st.one_of(
    st.tuples(st.just("chunk"), st.floats(-1.0, 0.1), st.floats(-50, 50), st.sampled_from([0.02, 0.1, 0.5]),
              st.integers(1, 30), st.booleans()),
    st.tuples(st.just("state"), st.lists(values, min_size=6, max_size=6)),
    st.tuples(st.just("tick"), st.sampled_from([0.02, 0.02, 0.02, 0.3, 1.0, -0.5, -30.0])),
    st.tuples(st.just("estop"), st.booleans()),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(events, st.sampled_from(["latest", "weighted_average", "temporal_ensemble"]))
def test_no_sequence_of_chunks_states_ticks_and_estops_gives_an_unsafe_command(sequence, blending):
    config = ExecutorConfig(control_rate_hz=50.0, blending=blending)
    executor = ChunkExecutor(config, ROBOT)
    now = 100.0
    step = ROBOT.max_velocity * config.period + 1e-9
    previous, measured = None, None
    for event in sequence:
        kind = event[0]
        if kind == "chunk":
            _, age, value, dt, horizon, poison = event
            actions = np.full((horizon, 6), value, np.float32)
            if poison:
                actions[horizon // 2, 2] = np.nan
            try:
                chunk = ActionChunk(stamp=now + age, actions=actions, dt=dt, names=list(JOINTS))
                executor.on_chunk(chunk, now)
            except InputError:
                pass
        elif kind == "state":
            try:
                executor.on_joint_state(JOINTS, event[1], now)
                measured = np.asarray(event[1], dtype=np.float64)
            except InputError:
                pass
        elif kind == "estop":
            if event[1]:
                executor.trip_estop("test")
            else:
                executor.clear_estop()
        else:
            now += event[1]
            tick = executor.tick(now)
            if tick.command is None:
                previous = None
                continue
            command = tick.command
            assert not executor.estop.engaged
            assert np.all(np.isfinite(command))
            assert np.all(command >= ROBOT.lower) and np.all(command <= ROBOT.upper)
            # One period of velocity from the last command, or from the measured joint state
            # (from the nearest limit when a reading lies outside them).
            references = [np.clip(r, ROBOT.lower, ROBOT.upper) for r in (previous, measured) if r is not None]
            assert any(np.all(np.abs(command - ref) <= step) for ref in references)
            previous = command
