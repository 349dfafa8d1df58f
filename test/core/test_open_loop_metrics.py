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


def _record(step, actions, targets, critical=(), episode=0):
    return StepRecord(bag="b", episode=episode, step=step, time_s=0.1 * step,
                      actions=None if actions is None else np.asarray(actions, np.float32),
                      targets=np.asarray(targets, np.float32), stamp=0.1 * step, dt=0.1,
                      critical=critical)


def test_summarize_reports_both_metrics_per_strategy():
    same = [[0.0], [0.0]]
    steps = [_record(0, [[1.0], [1.0]], same),  # error 1 elsewhere
             _record(1, [[3.0], [3.0]], same, critical=("gripper",)),  # error 9 in a window
             _record(2, None, same),  # a failed step ends the run of chunks
             _record(3, [[1.0], [2.0]], same),  # error 2.5 elsewhere
             _record(4, [[1.0], [2.0]], same, critical=("acceleration",))]  # error 2.5
    records = {"full": steps}
    summary = add_window_and_boundary_metrics(summarize(records, first_k=2), records, 2, 0.2)["full"]
    windows = summary["critical_windows"]
    assert windows["mse"]["gripper"] == 9.0 and windows["mse"]["acceleration"] == 2.5
    assert windows["mse"]["critical"] == pytest.approx(5.75)
    assert windows["mse"]["elsewhere"] == pytest.approx(1.75)
    boundary = summary["chunk_boundary"]
    # step 0 -> 1: new first action 3 vs old second 1; step 3 -> 4: 1 vs 2; 1 -> 3 is no boundary
    assert boundary["boundaries"] == 2 and boundary["jump_mean"] == pytest.approx(1.5)
