"""Helpers for tests over real rclpy: wait on graph events, never on fixed sleeps."""

from __future__ import annotations

import time


def spin_until(executor, condition, timeout_s: float = 15.0) -> bool:
    """Spin `executor` until `condition()` is true or `timeout_s` passes; return the outcome."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.05)
    return condition()
