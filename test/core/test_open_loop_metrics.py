"""Open-loop metrics on constructed cases whose answers are known by hand.

Task-critical windows (gripper changes, large accelerations) and chunk-boundary
discontinuity, as evaluation/open_loop_metrics.py computes them and summarize reports them.
"""

from __future__ import annotations

import numpy as np
import pytest

from dysta_ros.errors import ConfigError
from dysta_ros.evaluation.open_loop import (
    EvalConfig,
    StepRecord,
    add_window_and_boundary_metrics,
    summarize,
)
from dysta_ros.evaluation.open_loop_metrics import (
    CriticalWindows,
    chunk_boundaries,
    critical_events,
    window_errors,
    window_tags,
)

TIMES = np.round(np.arange(21) * 0.1, 10)  # 0.0 ... 2.0 s


def _recording():
    """Return actions of [arm, gripper]: the arm turns at 0.5 s, the gripper closes at 1.0 s."""
    arm = np.where(TIMES < 0.5, TIMES, 0.5 - 2 * (TIMES - 0.5))  # slope +1, then -2
    gripper = np.where(TIMES < 1.0, 0.0, 1.0)
    return np.stack([arm, gripper], axis=1)


def test_gripper_changes_and_the_arms_turn_are_the_events():
    events = critical_events(TIMES, _recording(), ["arm", "gripper"],
                             CriticalWindows(accel_quantile=0.9))
    assert events == [("acceleration", pytest.approx(0.5)), ("gripper", pytest.approx(1.0))]
    # without a gripper joint, its step counts as arm motion: accelerations around 1.0 s
    events = critical_events(TIMES, _recording(), ["arm", "gripper"],
                             CriticalWindows(gripper_joint="none", accel_quantile=0.8))
    assert {kind for kind, _ in events} == {"acceleration"}
    assert [round(t, 3) for _, t in events] == [0.5, 0.9, 1.0]
    # accel_quantile 1 switches accelerations off
    assert critical_events(TIMES, _recording(), ["a", "gripper"],
                           CriticalWindows(accel_quantile=1.0)) == [("gripper", pytest.approx(1.0))]


def test_window_settings_are_checked():
    with pytest.raises(ConfigError, match="gripper_joint 'claw' is not one of the joints"):
        critical_events(TIMES, _recording(), ["arm", "gripper"], CriticalWindows(gripper_joint="claw"))
    with pytest.raises(ConfigError, match="window_s"):
        CriticalWindows(window_s=-1)
    with pytest.raises(ConfigError, match="accel_quantile"):
        EvalConfig(bags=["b"], accel_quantile=0.0)


def test_error_inside_the_windows_is_separated_from_the_rest():
    tags = window_tags(TIMES, [("gripper", 1.0)], window_s=0.15)
    assert [t for t, tag in zip(TIMES, tags) if tag] == pytest.approx([0.9, 1.0, 1.1])
    per_step = np.where([bool(t) for t in tags], 4.0, 1.0)
    per_step[0] = np.nan  # a step with nothing recorded to compare is left out
    result = window_errors(per_step, tags, 0.15)
    assert result["mse"] == {"critical": 4.0, "gripper": 4.0, "acceleration": None,
                             "elsewhere": 1.0}
    assert result["steps"]["critical"] == 3 and result["steps"]["elsewhere"] == 17
    assert result["critical_over_elsewhere"] == 4.0


def _chunk(instants, offset):
    """Return a (4, 2) chunk whose action for instant n is n + offset in both dimensions."""
    return np.repeat((np.asarray(instants, float) + offset)[:, None], 2, axis=1)


def test_chunk_boundary_jump_and_overlap():
    dt = 0.1
    run = [(0.0, dt, _chunk([0, 1, 2, 3], 0.0)),  # chunk 1 disagrees by 0.5 about instants 1-3
           (0.1, dt, _chunk([1, 2, 3, 4], 0.5)),
           (0.2, dt, _chunk([2, 3, 4, 5], 0.5)),  # chunk 2 agrees with chunk 1
           (0.9, dt, _chunk([9, 10, 11, 12], 0.0))]  # 7 actions later: chunk 2 had run out
    result = chunk_boundaries([run])
    assert result["boundaries"] == 2 and result["without_overlap"] == 1
    assert result["jump_max"] == pytest.approx(0.5 * np.sqrt(2))  # L2 over two dimensions
    assert result["jump_mean"] == pytest.approx(0.25 * np.sqrt(2))
    assert result["jump_per_dim"] == pytest.approx([0.25, 0.25])
    assert result["overlap_rmse_mean"] == pytest.approx(0.25)
    assert chunk_boundaries([])["jump_mean"] is None


def _record(step, actions, targets, episode=0):
    return StepRecord(bag="b", episode=episode, step=step, time_s=0.1 * step,
                      actions=None if actions is None else np.asarray(actions, np.float32),
                      targets=np.asarray(targets, np.float32), stamp=0.1 * step, dt=0.1)


def test_the_results_get_both_metrics_per_strategy():
    """Events are found in the recorded actions at the steps (each step's first target)."""
    def recorded(t):  # [arm, gripper]: the gripper closes at 0.5 s
        return [[0.0, 0.0 if t < 0.5 else 1.0]] * 2

    predicted = [[0.0, 0.0]] * 2
    steps = [_record(i, predicted, recorded(0.1 * i)) for i in range(10)]
    steps[7] = _record(7, None, recorded(0.7))  # a failed step ends the run of chunks
    records = {"full": steps}
    config = EvalConfig(bags=["b"], strategies=["full"], first_k=2, window_s=0.1, accel_quantile=1.0)
    results = {"summary": summarize(records, 2), "joints": ["arm", "gripper"]}
    add_window_and_boundary_metrics(results, records, config)
    assert results["critical_events"] == [{"bag": "b", "episode": 0, "kind": "gripper",
                                           "time_s": 0.5}]
    windows = results["summary"]["full"]["critical_windows"]
    # steps at 0.4, 0.5, 0.6 s lie in the window; from 0.5 on the gripper error is 1 in one of 2 dims
    assert windows["steps"]["critical"] == 3 and windows["steps"]["elsewhere"] == 6
    assert windows["mse"]["gripper"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert windows["mse"]["elsewhere"] == pytest.approx(2 * 0.5 / 6)  # steps 0-3: 0; 8, 9: 0.5
    boundary = results["summary"]["full"]["chunk_boundary"]
    assert boundary["boundaries"] == 7 and boundary["jump_max"] == 0.0  # steps 0-6: 6, 8-9: 1
    assert results["joint_plot"]["critical"][4:7] == [["gripper"]] * 3


def test_window_mse_weighs_actions_as_the_overall_mse_does():
    """A step near the episode's end compares fewer actions (the rest have no recording)."""
    nan = np.nan
    steps = [_record(0, [[0.0, 0.0]] * 2, [[0.0, 0.0]] * 2),
             _record(1, [[0.0, 0.0]] * 2, [[0.0, 0.0]] * 2),
             _record(2, [[1.0, 1.0]] * 2, [[0.0, 0.0], [nan, nan]])]
    records = {"full": steps}
    config = EvalConfig(bags=["b"], strategies=["full"], first_k=2, window_s=0.0,
                        gripper_joint="none", accel_quantile=1.0)  # no events: all elsewhere
    results = {"summary": summarize(records, 2), "joints": ["a", "b"]}
    add_window_and_boundary_metrics(results, records, config)
    # 5 actions compared, one of them off by 1 in both dims: (1 + 1) / (5 * 2)
    assert results["summary"]["full"]["action_error"]["mse"] == pytest.approx(0.2)
    windows = results["summary"]["full"]["critical_windows"]
    assert windows["steps"]["elsewhere"] == 3
    assert windows["mse"]["elsewhere"] == pytest.approx(0.2)  # not (0 + 0 + 1) / 3 steps
