"""`dysta-ros tracking`'s figures from samples, without ROS: the error, and stalls while the plan moves."""

import argparse
import json

import numpy as np

from dysta_ros.nodes.tracking import MOVING, STALLED, report, summarise


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


def test_tracking_json_is_the_one_shape_in_the_file_and_on_stdout(tmp_path, capsys):
    samples = [sample(0.02 * i, 0.1, 0.1 + 0.01 * i, 0.5, 0.5) for i in range(4)]
    reports = [summarise("lookahead", {}, samples),
               summarise("single", {"trajectory_lookahead_s": 0.0}, samples)]
    args = argparse.Namespace(task="reach", seconds=1.0, out=str(tmp_path / "report"), json="-")
    assert report(reports, args) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # the table went to stderr, stdout is the document alone
    assert "| scheme |" in captured.err
    assert [r["scheme"] for r in document["runs"]] == ["lookahead", "single"]
    assert document["meta"]["task"] == "reach" and len(document["meta"]["load_average"]) == 3
    assert json.loads((tmp_path / "report" / "tracking.json").read_text()) == document
    assert report([summarise("single", {}, samples[:1])], argparse.Namespace(
        task="reach", seconds=1.0, out=str(tmp_path / "few"), json=None)) == 1  # too few samples
