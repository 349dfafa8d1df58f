"""Calling a ROS service, and waiting, from a thread other than the one that spins the nodes.

`dysta-ros demo` and `dysta-ros record --task` drive episodes from a worker thread while
another thread spins every node: a call is sent, and its future is polled until it is done.
"""

from __future__ import annotations

import time

SERVICE_TIMEOUT_S = 30.0


def wait_until(condition, timeout_s: float, poll_s: float = 0.02) -> bool:
    """Wait (another thread spins the nodes) until `condition()` or the timeout; return it."""
    try:
        wait_for(condition, "", timeout_s, poll_s=poll_s)
    except TimeoutError:
        return False
    return True


def wait_for(condition, what: str, timeout_s: float, on_wait=None, alive=None, poll_s: float = 0.1) -> None:
    """Wait until `condition()`; raise TimeoutError after `timeout_s` without progress.

    Progress is `condition()` turning true, or (with `alive`) a change of `alive()`;
    `on_wait()` runs between polls.
    """
    deadline, last = time.monotonic() + timeout_s, alive() if alive else None
    while not condition():
        if alive is not None and alive() != last:
            deadline, last = time.monotonic() + timeout_s, alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        if on_wait is not None:
            on_wait()
        time.sleep(poll_s)


def call_service(client, request, what: str, timeout_s: float = SERVICE_TIMEOUT_S):
    """Call `client` with `request` and return the reply; raise TimeoutError naming `what`."""
    if not client.wait_for_service(timeout_sec=timeout_s):
        raise TimeoutError(f"{what}: service {client.srv_name} did not appear in {timeout_s:.0f} s")
    future = client.call_async(request)
    if not wait_until(future.done, timeout_s, poll_s=0.005) or future.result() is None:
        raise TimeoutError(f"{what}: no reply from {client.srv_name}")
    return future.result()


def set_remote_parameters(client, what: str, timeout_s: float = SERVICE_TIMEOUT_S, **values) -> None:
    """Set another node's parameters through its SetParameters `client`; a refusal is a ConfigError."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    from dysta_ros.errors import ConfigError

    request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                for k, v in values.items()])
    for name, result in zip(values, call_service(client, request, what, timeout_s).results):
        if not result.successful:
            raise ConfigError(f"{what}: {name}={values[name]!r} refused: {result.reason}")
