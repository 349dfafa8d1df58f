"""sim/controller.TrajectoryFollower: JointTrajectoryController semantics without ROS."""

import numpy as np
import pytest

from dysta_ros.errors import InputError
from dysta_ros.sim.controller import TrajectoryFollower

JOINTS = ("a", "b")


def test_a_multi_point_trajectory_is_interpolated_from_the_current_target():
    follower = TrajectoryFollower(JOINTS, np.zeros(2))
    # three points: out to 0.3, back to 0.1, on to 0.2 (joint a); b stays unnamed
    follower.set(["a"], np.array([[0.3], [0.1], [0.2]]), np.array([0.1, 0.2, 0.3]), start=10.0, now=10.0)
    # between "now" and the first point: from the current target towards it, not a jump
    np.testing.assert_allclose(follower.target(10.05), [0.15, 0.0])
    np.testing.assert_allclose(follower.target(10.1), [0.3, 0.0])
    np.testing.assert_allclose(follower.target(10.15), [0.2, 0.0])  # between points 1 and 2
    np.testing.assert_allclose(follower.target(10.25), [0.15, 0.0])
    np.testing.assert_allclose(follower.target(11.0), [0.2, 0.0])  # after the last point: holds it


def test_a_new_trajectory_replaces_the_old_from_where_the_target_is():
    follower = TrajectoryFollower(JOINTS, np.zeros(2))
    follower.set(list(JOINTS), np.array([[1.0, 1.0]]), np.array([1.0]), start=0.0, now=0.0)
    halfway = follower.target(0.5)  # (0.5, 0.5)
    # arrives at 0.5, stamped 0.4 (transport): its first point (0.5 s after the stamp) is 0.4 s away
    follower.set(list(JOINTS), np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([0.5, 1.0]), start=0.4, now=0.5)
    np.testing.assert_allclose(follower.target(0.5), halfway)  # no jump on arrival
    np.testing.assert_allclose(follower.target(0.7), [0.25, 0.75])
    np.testing.assert_allclose(follower.target(0.9), [0.0, 1.0])
    np.testing.assert_allclose(follower.target(1.4), [0.0, 0.0])
    # points already past when it arrives are skipped; an empty trajectory holds where it is
    follower.set(["a"], np.array([[5.0], [1.0]]), np.array([0.1, 1.0]), start=1.0, now=1.5)
    np.testing.assert_allclose(follower.target(2.0), [1.0, 0.0])
    here = follower.target(1.7)
    follower.set([], np.zeros((0, 0)), np.zeros(0), start=1.7, now=1.7)
    np.testing.assert_allclose(follower.target(5.0), here)


def test_a_bad_trajectory_is_refused_and_the_old_one_kept():
    follower = TrajectoryFollower(JOINTS, np.zeros(2))
    follower.set(["a"], np.array([[1.0]]), np.array([1.0]), start=0.0, now=0.0)
    for names, times in ((["c"], [1.0]), (["a"], [0.5, 0.5])):
        with pytest.raises(InputError):
            follower.set(names, np.ones((len(times), 1)), np.array(times), start=0.0, now=0.0)
    np.testing.assert_allclose(follower.target(0.5), [0.5, 0.0])
