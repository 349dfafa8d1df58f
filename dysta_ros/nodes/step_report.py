"""What policy_node reports of its steps: counts, rate and its own overhead (no ROS)."""

from __future__ import annotations

import collections

import numpy as np

RATE_WINDOW = 20  # steps over which the step rate is measured
OVERHEAD_WINDOW = 200  # steps over which the node's own overhead percentiles are taken
SUMMARY_WINDOW = 10_000  # steps whose model time `summary()` reports (~17 min at 10 Hz)


class StepReport:
    """Count steps and refusals; summarise the last steps for the `inference` /diagnostics entry."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (each activation)."""
        self.steps = self.errors = 0
        self.step_times: collections.deque[float] = collections.deque(maxlen=RATE_WINDOW)
        self.node_ms: collections.deque[float] = collections.deque(maxlen=OVERHEAD_WINDOW)
        self.model_ms: collections.deque[float] = collections.deque(maxlen=SUMMARY_WINDOW)

    def stepped(self, stats, received: float, stamp: float, start: float, now: float) -> dict[str, str]:
        """Record a step that started at `start` on frames received at `received`; return its report.

        `stamp` is the frames' capture time, `now` the time its chunk went out.
        """
        self.steps += 1
        self.model_ms.append(stats.stage_ms.get("total", 0.0))
        self.node_ms.append((start - received) * 1e3)  # last frame's arrival -> step start
        self.step_times.append(start)
        span = self.step_times[-1] - self.step_times[0]
        rate = (len(self.step_times) - 1) / span if span > 0 else 0.0
        return dict(rate_hz=f"{rate:.2f}",
                    model_ms=f"{stats.stage_ms.get('total', 0.0):.2f}",
                    frame_age_at_start_ms=f"{(start - stamp) * 1e3:.2f}",
                    stamp_to_chunk_ms=f"{(now - stamp) * 1e3:.2f}",
                    # this node's own cost before the model: wake-up, snapshot, conversions
                    arrival_to_step_ms_p50=f"{np.percentile(self.node_ms, 50):.2f}",
                    arrival_to_step_ms_p99=f"{np.percentile(self.node_ms, 99):.2f}",
                    context_tokens=stats.context_tokens, errors=self.errors)

    def summary(self) -> dict:
        """Steps, refusals and the policy step's time (results.py's `step_ms_p50`) since activation."""
        times = np.asarray(self.model_ms)
        return {"steps": self.steps, "errors": self.errors,
                "step_ms_p50": float(np.percentile(times, 50)) if len(times) else None,
                "step_ms_p90": float(np.percentile(times, 90)) if len(times) else None}
