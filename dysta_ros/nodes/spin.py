"""Spin nodes until Ctrl-C or shutdown, then tear them down cleanly: the one `main()` template."""

from __future__ import annotations

import time

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor


def spin_nodes(nodes, executor=None, until: float | None = None) -> int:
    """Spin `nodes` on one executor until interrupted (or time.monotonic() passes `until`); return 0."""
    executor = executor or MultiThreadedExecutor()
    for node in nodes:
        executor.add_node(node)
    try:
        while rclpy.ok() and (until is None or time.monotonic() < until):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            close = getattr(node, "close", None)
            if close is not None:
                close()  # stop threads before the node goes away
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0
