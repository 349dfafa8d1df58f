"""Per-stage step timing, shared by every model family's runtime."""

from __future__ import annotations

import time

import torch

from dysta_ros.types import STAGES


class StageTimer:
    """Milliseconds per stage; synchronises CUDA so a stage's time is its own."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.ms = {stage: 0.0 for stage in STAGES}
        self.parts: dict[str, float] = {}  # parts of a stage worth their own line (SmolVLA: connector)
        self._start = self._last = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def part(self, name: str, start: float) -> None:
        """Record a part of the current stage (ms since `start`, a now() reading) in `parts`."""
        self.parts[name] = self.parts.get(name, 0.0) + (self._now() - start) * 1e3

    def now(self) -> float:
        return self._now()

    def lap(self, stage: str) -> None:
        now = self._now()
        self.ms[stage] += (now - self._last) * 1e3
        self._last = now

    def finish(self) -> dict[str, float]:
        self.ms["total"] = (self._now() - self._start) * 1e3
        return self.ms
