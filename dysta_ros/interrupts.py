"""Signal handling around work that must not be cut in two (no ROS: training and nodes use it)."""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_handled(handler):
    """Within: SIGINT and SIGTERM call handler(number, frame); the previous handlers come back after."""
    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


@contextlib.contextmanager
def interrupts_deferred():
    """Within: Ctrl-C (SIGINT) and SIGTERM wait until the block is done, then act as they would have.

    A save is several files; cut between two of them, it left weights of one step beside the
    optimizer state of the previous one, which --resume took as a complete run. Only the main
    thread may set handlers; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    try:
        with signals_handled(lambda number, _: caught.append(number)):
            yield
    finally:
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)  # now, with the handler it would have met
