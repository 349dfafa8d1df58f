"""nodes/service_calls' waits, without ROS: a condition met, a timeout, progress that extends it."""

import threading
import time

import pytest

from dysta_ros.nodes.service_calls import wait_for, wait_until


def test_wait_until_returns_whether_the_condition_came_true():
    flag = threading.Event()
    threading.Timer(0.05, flag.set).start()
    assert wait_until(flag.is_set, 10.0, poll_s=0.005)
    assert not wait_until(lambda: False, 0.05, poll_s=0.005)


def test_wait_for_raises_naming_what_and_progress_keeps_it_waiting():
    with pytest.raises(TimeoutError, match="for the outcome"):
        wait_for(lambda: False, "the outcome", 0.05, poll_s=0.005)
    start = time.monotonic()
    ticks = []  # alive() changes on every poll: progress, so the 0.05 s timeout keeps moving

    def alive():
        ticks.append(1)
        return len(ticks)

    wait_for(lambda: time.monotonic() - start > 0.2, "progress", 0.05, alive=alive, poll_s=0.01)
    assert len(ticks) > 5
