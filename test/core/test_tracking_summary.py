"""`dysta-ros tracking`'s figures from samples, without ROS: the error, and stalls while the plan moves."""

import numpy as np

from dysta_ros.nodes.tracking import MOVING, STALLED, summarise


def sample(t, position, target, arm_speed, plan_speed, episode=1):
    return (t, np.array([position, 0.0]), np.array([target, 0.0]), episode,
            np.array([arm_speed, 0.0]), np.array([plan_speed, 0.0]))


def test_error_is_the_worst_joint_and_a_stall_is_an_arm_still_while_the_plan_moves():
    samples = [sample(0.00, 0.10, 0.10, 0.5, 0.5),  # tracking, moving
               sample(0.02, 0.10, 0.14, 0.0, 0.5),  # stalled: the plan moves, the arm does not
               sample(0.04, 0.10, 0.13, 0.5 * STALLED * 0.5, 0.5),  # under STALLED of the plan: stalled
               sample(0.06, 0.10, 0.10, 0.0, MOVING / 2)]  # the plan barely moves: not a stall
    report = summarise("single", {}, samples)
    assert report["samples"] == 4 and report["plan_moving_samples"] == 3
    assert report["stalled_fraction"] == 2 / 3
    np.testing.assert_allclose(report["error_rad"]["max"], 0.04)
    np.testing.assert_allclose(report["error_rad"]["rms"], np.sqrt((0.04**2 + 0.03**2) / 4))


def test_too_few_samples_say_so():
    assert "error_rad" not in summarise("lookahead", {}, [sample(0.0, 0.0, 0.0, 0.0, 0.0)])
