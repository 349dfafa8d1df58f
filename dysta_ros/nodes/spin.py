"""Start nodes and spin them until Ctrl-C or shutdown, then tear them down: the one `main()` template."""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading
import time
from collections.abc import Callable

import rclpy
from rclpy.executors import (Executor, ExternalShutdownException, MultiThreadedExecutor, ShutdownException,
                             SingleThreadedExecutor, TimeoutException)
from rclpy.signals import SignalHandlerOptions, get_current_signal_handlers_options

from dysta_ros.errors import ConfigError
from dysta_ros.interrupts import signals_handled
from dysta_ros.nodes.transport import use_large_frame_transport

REFUSED_EXIT_CODE = 2  # a configuration refused at start-up (as argparse exits on a bad argument)
GIL_SWITCH_INTERVAL_S = 0.0005


def share_the_gil_finely() -> None:
    """Shorten the interpreter's thread switch interval for a process that runs nodes.

    Called by each main() before its nodes start, never at import. Inference, physics and
    rendering are many short C calls, each releasing and re-taking the GIL; at Python's default
    5 ms switch interval, any busy thread in the process (executor callbacks, a sim sharing it)
    makes every re-take wait its turn. Measured in the demo (sim, expert, policy and executor in
    one process): sim and policy steps 10-40x slower, a 6 s episode taking 50 s of wall time.
    0.5 ms keeps each thread close to its own speed.
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))


def events_executor() -> Callable[[], Executor]:
    """Return rclpy's events executor where it has one (Kilted on), else its single-threaded one.

    The events executor dispatches callbacks from C++; the others run a Python wait-set loop
    that holds the GIL between callbacks, which a thread woken by a callback (policy_node's
    inference) waits for: camera stamp -> step start p99 6.0 -> 4.4 ms at 2 x 640x480 x 30 Hz.
    """
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:
        return SingleThreadedExecutor
    return EventsExecutor


class _Interrupts:
    """A SIGINT handler that lets the first Ctrl-C pass (rclpy ends ROS on it) and raises on the second."""

    def __init__(self):
        self.count = 0

    def __call__(self, signum, frame):
        # Before rclpy.init has installed its handler (or after shutdown removed it), nothing
        # else would end the process: raise, as Python's own handler does.
        if get_current_signal_handlers_options() == SignalHandlerOptions.NO:
            raise KeyboardInterrupt
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_end_ros():
    """Within: Ctrl-C ends ROS as SIGTERM does, by the context shutdown alone; a second one raises.

    Enter before rclpy.init: rclpy's handler, on SIGINT as on SIGTERM, shuts the context down
    (which ends the spin loop, a publish, a step) after calling the handler it replaced, this
    one. Python's own would also raise KeyboardInterrupt in the main thread at whatever it is
    doing; inside a finalizer it can only print it ("Exception ignored in: <function
    Future.__del__ ...>", a traceback) and drop it: 1 of 10 SIGINT tries of `dysta-ros run` in
    test_shutdown on a starved machine. The second Ctrl-C is for an end that hangs.
    """
    previous = signal.signal(signal.SIGINT, _Interrupts())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _raise_interrupt(number, frame):
    raise KeyboardInterrupt(number)


def signals_interrupt():
    """Within: SIGINT and SIGTERM raise KeyboardInterrupt(signal number) in the main thread.

    For start-up before rclpy's handlers are installed (rclpy.init without them): the caller
    undoes what it started, while every rcl call still works.
    """
    return signals_handled(_raise_interrupt)


@contextlib.contextmanager
def signals_stop():
    """Within: the first SIGINT or SIGTERM sets the Event yielded, the next raises KeyboardInterrupt.

    For a loop that ends on the flag and then takes what has arrived (see spin_what_has_arrived):
    rclpy's handlers shut the context down, which destroys every node at once with whatever its
    subscriptions had received but not yet taken. Enter before rclpy.init(signal_handler_options=NO).
    """
    stop = threading.Event()

    def handler(number, frame):
        if stop.is_set():  # a second one: an end that hangs
            raise KeyboardInterrupt(number)
        stop.set()

    with signals_handled(handler):
        yield stop


def spin_what_has_arrived(executor: Executor, most: int) -> None:
    """Run the callbacks that are ready (messages received, timers due), up to `most` of them."""
    for _ in range(most):
        try:
            handler, _, _ = executor.wait_for_ready_callbacks(timeout_sec=0.0)
        except (TimeoutException, ShutdownException, ExternalShutdownException):
            return
        handler()
        handler.result()  # raise what the callback raised


def refuse_to_start(name: str, exc: ConfigError) -> int:
    """Log why `name` does not start, as one line, and return the exit code that says so."""
    rclpy.logging.get_logger(name).fatal(f"not started: {exc}")
    return REFUSED_EXIT_CODE


def run_node(name: str, make_node, executor_class=MultiThreadedExecutor, args=None) -> int:
    """Start the node `make_node()` makes and spin it; a refused configuration exits 2, no traceback."""
    share_the_gil_finely()
    use_large_frame_transport()
    with interrupts_end_ros():
        return _run_node(name, make_node, executor_class, args)


def _run_node(name: str, make_node, executor_class, args) -> int:
    rclpy.init(args=args)
    # The executor first: it is made in microseconds, while the node takes seconds, so a signal
    # lands in the node's construction (handled below) rather than in a half-made executor.
    executor = executor_class()
    try:
        node = make_node()
    except ConfigError as exc:
        code = refuse_to_start(name, exc)
        executor.shutdown()
        rclpy.try_shutdown()
        return code
    except KeyboardInterrupt:  # a second Ctrl-C while it was still starting
        executor.shutdown()
        rclpy.try_shutdown()
        return 130
    except Exception:
        if rclpy.ok():
            raise
        executor.shutdown()
        return 0  # Ctrl-C or SIGTERM while it was starting: rclpy shut the context down under it
    return spin_nodes([node], executor)


def spin_nodes(nodes, executor=None, until: float | None = None, tick=None) -> int:
    """Spin `nodes` on one executor until interrupted (or time.monotonic() passes `until`); return 0.

    130 where a second Ctrl-C cut the teardown short.

    `executor`: an executor, or its class (default MultiThreadedExecutor). `tick()`, if given,
    runs after every spin (about every 0.1 s): `dysta-ros run`'s status line.
    """
    made, code = None, 0
    try:
        try:
            made = executor() if isinstance(executor, type) else executor or MultiThreadedExecutor()
            for node in nodes:
                made.add_node(node)
            # What start-up built lives as long as the process: keep it out of the collector's full
            # passes, which otherwise pause a control loop for tens of ms (policy_node does the same
            # after loading its model).
            gc.freeze()
            while rclpy.ok() and (until is None or time.monotonic() < until):
                made.spin_once(timeout_sec=0.1)
                if tick is not None:
                    tick()
        except ExternalShutdownException:
            pass
        except Exception:
            # SIGTERM (and SIGINT) shut the context down from the signal handler, possibly in the
            # middle of spin_once, whose next rcl call then fails (RCLError: "context is not valid").
            # That is the requested end; anything raised while the context is still up is a bug.
            if rclpy.ok():
                raise
    except KeyboardInterrupt:
        # A second Ctrl-C (interrupts_end_ros), or a caller that kept Python's handler: the
        # interrupt may surface inside the handler above (the failure its context shutdown
        # caused came first), so it is caught here, wherever it surfaces.
        pass
    finally:
        try:
            for node in nodes:
                close = getattr(node, "close", None)
                if close is not None:
                    close()  # stop threads before the node goes away
                node.destroy_node()
            if made is not None:
                made.shutdown()
            rclpy.try_shutdown()
        except KeyboardInterrupt:
            # a second Ctrl-C while ending (e.g. waiting for a step): end now, as asked, without
            # the rest of the teardown (the context is already down) and without a traceback
            code = 130
    return code
