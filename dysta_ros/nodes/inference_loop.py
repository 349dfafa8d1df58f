"""policy_node's inference thread: wait for new inputs, step at most at a rate, survive a bad step."""

from __future__ import annotations

import threading
import time
from typing import Callable


class InferenceLoop:
    """Run `step()` on a thread of its own each time `wait(seen)` reports new inputs, at most `rate_hz()`.

    `step()` returns whether it stepped (only a step starts the rate's wait); an exception it
    raises goes to `on_failure(exc)` and the loop goes on: the node must never die of one step.
    """

    def __init__(self, wait: Callable[[int, float], int], step: Callable[[], bool],
                 rate_hz: Callable[[], float], on_failure: Callable[[Exception], None]):
        self.wait, self.step, self.rate_hz, self.on_failure = wait, step, rate_hz, on_failure
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.stop_event.clear()
        self.thread = threading.Thread(target=self.run, name="inference", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread and wait until its current step is done."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def run(self) -> None:
        seen, next_start = 0, 0.0
        while not self.stop_event.is_set():
            seen = self.wait(seen, 0.1)
            delay = next_start - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):  # at most rate_hz()
                break
            try:
                if self.step():
                    next_start = time.monotonic() + 1.0 / self.rate_hz()
            except Exception as exc:  # noqa: BLE001 - the node must never die of one bad step
                self.on_failure(exc)
