"""Saves that a Ctrl-C cannot cut in two (both families' trainers)."""

from __future__ import annotations

import contextlib
import signal
import threading


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
    previous = {number: signal.signal(number, lambda number, _: caught.append(number))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)  # now, with the handler it would have met
